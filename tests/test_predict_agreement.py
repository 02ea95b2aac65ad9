"""`clip-workbench predict`, the server's `/v1/classify` and `evaluate.zero_shot_probabilities` give the same probabilities.

One saved tiny model, three small images, the same labels three ways: the command line in a subprocess, the server over
real HTTP, and the library function both are meant to share (one formula: softmax of the model's own logit scale times
the cosines with the prompt-ensemble class embeddings of the `general` domain's templates).
"""
import json, os, subprocess, sys
from pathlib import Path

import httpx, pytest, torch

from clip_workbench.data import synthetic_image
from clip_workbench.evaluate import encode_images, zero_shot_probabilities
from clip_workbench.models import load_model, save_model, tiny_clip
from clip_workbench.serve import create_app, serve_in_thread

BIN = Path(sys.executable).parent / 'clip-workbench'
ENV = dict(os.environ, HF_HUB_OFFLINE='1')
TOL = 1e-6  # predict prints full precision, so all three are held to the same tolerance
LABEL_SETS = {'plain': ['cat', 'dog', 'car'],
              'normalised': ['Sports_Car', 'tabby-cat', 'dog']}   # the server writes these 'sports car', 'tabby cat'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "(model folder, image paths): the tiny model saved, three small PNG images written."
    root = tmp_path_factory.mktemp('agreement')
    folder = save_model(*tiny_clip(), root/'tiny-model')
    paths = []
    for k, side in enumerate((64, 48, 40)):
        p = root/f'img{k}.png'; synthetic_image(k, side).save(p); paths.append(p)
    return folder, paths

@pytest.fixture(scope='module')
def reference(setup):
    "labels -> evaluate.zero_shot_probabilities of the saved model on the image files, [n_images, n_labels]."
    folder, paths = setup
    model, proc = load_model(folder, device='cpu')
    emb = encode_images(model, proc, paths, progress=False)
    return {name: zero_shot_probabilities(model, proc, emb, labels) for name, labels in LABEL_SETS.items()}

@pytest.fixture(scope='module')
def client(setup):
    app = create_app(setup[0], device='cpu', max_wait_ms=2)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=httpx.Timeout(30.0)) as c:
        yield c

def by_label(preds:list, labels:list) -> list:
    "Probabilities in the order of `labels`, from a list of {label, probability}."
    d = {p['label']: p['probability'] for p in preds}
    assert sorted(d) == sorted(labels), (d, labels)
    return [d[l] for l in labels]


@pytest.mark.parametrize('name', list(LABEL_SETS))
def test_serve_matches_evaluate(setup, reference, client, name):
    "/v1/classify (multipart, the image files as they are) == zero_shot_probabilities, to 1e-6."
    _, paths = setup
    labels = LABEL_SETS[name]
    files = [('images', (p.name, p.read_bytes(), 'image/png')) for p in paths]
    r = client.post('/v1/classify', data={'labels': ','.join(labels), 'top_k': str(len(labels))}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()['domain'] == 'general'
    got = torch.tensor([by_label(d['predictions'], labels) for d in r.json()['data']], dtype=torch.float64)
    ref = reference[name].double()
    assert got.shape == ref.shape == (len(paths), len(labels))
    diff = float((got - ref).abs().max())
    assert diff <= TOL, f"serve vs evaluate: max difference {diff:.3g}\nserve:\n{got}\nevaluate:\n{ref}"


@pytest.mark.parametrize('name', list(LABEL_SETS))
def test_predict_matches_evaluate(setup, reference, name):
    "`clip-workbench predict` == zero_shot_probabilities (to TOL)."
    folder, paths = setup
    labels = LABEL_SETS[name]
    r = subprocess.run([str(BIN), 'predict', str(folder), *map(str, paths), '--labels', ','.join(labels),
                        '--top-k', str(len(labels)), '--device', 'cpu'], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert [Path(x['image']) for x in rows] == paths, r.stdout
    got = torch.tensor([by_label(x['labels'], labels) for x in rows], dtype=torch.float64)
    ref = reference[name].double()
    diff = float((got - ref).abs().max())
    assert diff <= TOL, f"predict vs evaluate: max difference {diff:.3g}\npredict:\n{got}\nevaluate:\n{ref}"


def test_flips_agree(setup):
    "With test-time flips 'hv': /v1/classify, `predict --flips hv` and zero_shot_probabilities agree (to TOL)."
    folder, paths = setup
    labels = LABEL_SETS['plain']
    model, proc = load_model(folder, device='cpu')
    ref = zero_shot_probabilities(model, proc, encode_images(model, proc, paths, progress=False, flips='hv'), labels).double()
    single = zero_shot_probabilities(model, proc, encode_images(model, proc, paths, progress=False), labels).double()
    assert float((ref - single).abs().max()) > TOL   # the flips change the answer, so agreement below means something
    files = [('images', (p.name, p.read_bytes(), 'image/png')) for p in paths]
    with serve_in_thread(create_app(folder, device='cpu', max_wait_ms=2, flips='hv')) as url:
        r = httpx.post(f'{url}/v1/classify', data={'labels': ','.join(labels), 'top_k': '3'}, files=files, timeout=30)
    assert r.status_code == 200, r.text
    served = torch.tensor([by_label(d['predictions'], labels) for d in r.json()['data']], dtype=torch.float64)
    p = subprocess.run([str(BIN), 'predict', str(folder), *map(str, paths), '--labels', ','.join(labels), '--top-k', '3',
                        '--device', 'cpu', '--flips', 'hv'], capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stderr
    predicted = torch.tensor([by_label(json.loads(l)['labels'], labels) for l in p.stdout.splitlines() if l.strip()],
                             dtype=torch.float64)
    for who, got in (('serve', served), ('predict', predicted)):
        diff = float((got - ref).abs().max())
        assert diff <= TOL, f"{who} vs evaluate with flips: max difference {diff:.3g}\n{who}:\n{got}\nevaluate:\n{ref}"
