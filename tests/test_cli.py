"The `clip-workbench` entry point, run as a user runs it: a subprocess."
import contextlib, json, os, socket, subprocess, sys, time
from pathlib import Path

import httpx, numpy as np, pytest

BIN = Path(sys.executable).parent / 'clip-workbench'
ENV = dict(os.environ, HF_HUB_OFFLINE='1')

def run(*args, timeout=300):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout, env=ENV)

def test_info_json():
    r = run('info', '--device', 'cpu', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['device']['type'] == 'cpu' and info['packages']['transformers'].startswith('5.')

def test_bad_device_is_one_clear_line():
    pytest.importorskip('torch')
    import torch
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    r = run('info', '--device', 'cuda')
    assert r.returncode == 2
    assert "config field 'device'" in r.stderr and 'Traceback' not in r.stderr

def test_help_lists_commands():
    r = run('--help')
    assert r.returncode == 0 and 'info' in r.stdout

def test_data_check_lists_every_problem_with_its_row(tmp_path):
    from clip_workbench.data import make_test_images
    folder = make_test_images(tmp_path, n=4, corrupt=True, missing=True, empty_caption=True)
    r = run('data', 'check', str(folder))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for kind, what in (('corrupt', 'corrupt or truncated image'), ('missing', 'image not found'), ('empty_caption', 'empty caption')):
        hit = [l for l in lines if what in l]
        assert len(hit) == 1 and 'captions.csv line ' in hit[0] and kind in hit[0], r.stdout

def test_data_check_json_and_clean_set(tmp_path):
    from clip_workbench.data import make_test_images
    r = run('data', 'check', str(make_test_images(tmp_path, n=4, fmt='jsonl')), '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['ok'] is True

def test_data_check_missing_path_is_a_clear_error(tmp_path):
    r = run('data', 'check', str(tmp_path / 'nowhere'))
    assert r.returncode == 2 and 'nowhere' in r.stderr and 'Traceback' not in r.stderr


# ---------------------------------------------------------------- export

@pytest.fixture(scope='module')
def onnx_export(tmp_path_factory):
    "`clip-workbench export tiny OUT`, run once for the tests below."
    out = tmp_path_factory.mktemp('export') / 'onnx'
    return out, run('export', 'tiny', str(out))

def test_export_end_to_end(onnx_export):
    out, r = onnx_export
    assert r.returncode == 0, r.stderr[-3000:]
    assert {'image_encoder.onnx', 'text_encoder.onnx', 'onnx_manifest.json', 'tokenizer.json'} <= {p.name for p in out.iterdir()}
    man = json.loads((out / 'onnx_manifest.json').read_text())
    assert man['dynamic_batch'] is True and man['parity']['image'] >= 0.9999 and man['parity']['text'] >= 0.9999, man
    assert str(out / 'image_encoder.onnx') in r.stdout and 'min cosine' in r.stdout and f'serve {out} --backend onnx' in r.stdout

def test_export_static_batch_checks_input_by_input(tmp_path):
    r = run('export', 'tiny', str(tmp_path / 'onnx'), '--static-batch')
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads((tmp_path / 'onnx' / 'onnx_manifest.json').read_text())
    assert man['dynamic_batch'] is False and min(man['parity']['image'], man['parity']['text']) >= 0.9999, man

def test_export_bad_model_folder_is_one_clear_line(tmp_path):
    model = tmp_path / 'no-such-model'
    r = run('export', str(model), str(tmp_path / 'out'))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith('clip-workbench export: error: ') and str(model) in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists()

def test_export_error_is_one_line_without_the_graph_dump(tmp_path):
    r = run('export', 'tiny', str(tmp_path / 'onnx'), '--opset', '9')  # attention has no ONNX operator before opset 14
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith('clip-workbench export: error: exporting the image tower') and 'opset 9' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr and r.stdout == '', r.stdout[:500]
    assert not list((tmp_path / 'onnx').glob('*.onnx'))

def test_export_min_cosine_out_of_range(tmp_path):
    r = run('export', 'tiny', str(tmp_path / 'onnx'), '--min-cosine', '1.5')
    assert r.returncode == 2 and '--min-cosine' in r.stderr and '(0, 1]' in r.stderr


# ---------------------------------------------------------------- serve

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

SERVE_ENV = {k: v for k, v in ENV.items() if k != 'CLIP_WORKBENCH_API_KEY'}  # no key unless a test sets one

@contextlib.contextmanager
def serving(log_path, *args, env=SERVE_ENV, timeout=60):
    "`clip-workbench serve ARGS` in a subprocess on a free loopback port; yields (base URL, process) once /health/ready answers 200."
    port = free_port()
    with open(log_path, 'w') as log:
        p = subprocess.Popen([str(BIN), 'serve', *args, '--port', str(port), '--log-level', 'warning'], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert p.poll() is None, f'the server exited with status {p.returncode}:\n' + Path(log_path).read_text()[-3000:]
            try:
                if httpx.get(url + '/health/ready', timeout=5).status_code == 200: break
            except httpx.TransportError: pass
            assert time.monotonic() < deadline, f'not ready within {timeout} s:\n' + Path(log_path).read_text()[-3000:]
            time.sleep(0.2)
        yield url, p
    finally:
        if p.poll() is None: p.kill()
        p.wait(timeout=30)

def stop(p):
    "SIGTERM, as a process manager stops it: uvicorn shuts down and the process ends."
    p.terminate()
    p.wait(timeout=30)

def embed(url, texts, **headers) -> httpx.Response:
    return httpx.post(url + '/v1/embeddings', json={'input': texts}, headers=headers, timeout=30)

TEXTS = ['a torn fabric', 'a clean weave']

@pytest.fixture(scope='module')
def torch_embeddings(tmp_path_factory):
    "The tiny model served with the torch backend, with an API key from the environment; its embeddings of TEXTS."
    log = tmp_path_factory.mktemp('serve') / 'torch.log'
    with serving(log, 'tiny', '--domain', 'industrial', env=dict(SERVE_ENV, CLIP_WORKBENCH_API_KEY='s3cret')) as (url, p):
        assert httpx.get(url + '/health/live', timeout=5).status_code == 200     # the health endpoints stay open
        assert embed(url, TEXTS).status_code == 401                               # the rest needs the key
        r = embed(url, TEXTS, **{'X-API-Key': 's3cret'})
        models = httpx.get(url + '/v1/models', headers={'Authorization': 'Bearer s3cret'}, timeout=5).json()['data'][0]
        stop(p)
    assert 'API key required' in log.read_text()
    return r, models

def test_serve_torch_over_http(torch_embeddings):
    r, models = torch_embeddings
    assert r.status_code == 200, r.text
    E = np.array([d['embedding'] for d in r.json()['data']])
    assert E.shape == (2, 32) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    assert models['backend'] == 'torch' and models['domain'] == 'industrial' and models['embedding_dim'] == 32

def test_serve_onnx_export_over_http(onnx_export, torch_embeddings, tmp_path):
    out, r = onnx_export
    assert r.returncode == 0, r.stderr[-3000:]
    with serving(tmp_path / 'onnx.log', str(out), '--backend', 'onnx') as (url, p):
        got = embed(url, TEXTS)
        models = httpx.get(url + '/v1/models', timeout=5).json()['data'][0]
        stop(p)
    assert got.status_code == 200, got.text
    assert models['backend'] == 'onnx' and models['embedding_dim'] == 32
    E = np.array([d['embedding'] for d in got.json()['data']])
    T = np.array([d['embedding'] for d in torch_embeddings[0].json()['data']])
    assert E.shape == (2, 32) and (E * T).sum(1).min() >= 0.9999  # the export of the same tiny model: the same embeddings

def test_serve_bad_model_folder_is_one_clear_line(tmp_path):
    r = run('serve', str(tmp_path / 'no-such-model'), '--port', str(free_port()))
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith('clip-workbench serve: error: ') and 'no-such-model' in r.stderr.splitlines()[-1], r.stderr


# ---------------------------------------------------------------- --help

def test_export_and_serve_help_list_their_options():
    r = run('--help')
    assert r.returncode == 0 and 'export' in r.stdout and 'serve' in r.stdout
    for cmd, opts in (('export', ['MODEL', 'OUT', '--opset', '--exporter', '--static-batch', '--no-check', '--min-cosine', '--device']),
                      ('serve', ['MODEL_DIR', '--host', '--port', '--backend', '--domain', '--device', '--dtype', '--max-batch-size',
                                 '--max-wait-ms', '--max-queue', '--max-items', '--max-body-bytes', '--max-image-pixels',
                                 '--request-timeout', '--log-level', 'CLIP_WORKBENCH_API_KEY'])):
        r = run(cmd, '--help')
        assert r.returncode == 0, r.stderr
        for o in opts: assert o in r.stdout, (cmd, o)
        assert '(default: ' in r.stdout
