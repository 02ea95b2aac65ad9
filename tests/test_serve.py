"The server over real HTTP: uvicorn in a thread on a random loopback port, every endpoint, bad input, overload, health, metrics, fuzz."
import asyncio, base64, io, json, time

import httpx, numpy as np, pytest, torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from clip_workbench.data import synthetic_image
from clip_workbench.models import save_model, tiny_clip
from clip_workbench.serve import create_app, serve_in_thread

TIMEOUT = httpx.Timeout(20.0)


def b64(img, fmt='PNG', mime=None) -> str:
    buf = io.BytesIO(); img.save(buf, format=fmt)
    return f'data:{mime or "image/" + fmt.lower()};base64,' + base64.b64encode(buf.getvalue()).decode()

def raw_b64(data:bytes, mime='image/png') -> str: return f'data:{mime};base64,' + base64.b64encode(data).decode()

def png_bytes(img) -> bytes:
    buf = io.BytesIO(); img.save(buf, format='PNG'); return buf.getvalue()

IMG = b64(synthetic_image(0, 64))
IMG2 = b64(synthetic_image(1, 48), 'JPEG')


@pytest.fixture(scope='module')
def tiny():
    return tiny_clip()

@pytest.fixture(scope='module')
def model_dir(tiny, tmp_path_factory):
    return save_model(*tiny, tmp_path_factory.mktemp('serve')/'tiny-model')

LIMITS = dict(max_items=8, max_body_bytes=300_000, max_image_pixels=1_000_000, request_timeout_s=15, ready_cache_s=0, max_wait_ms=2)

@pytest.fixture(scope='module')
def server(model_dir):
    "The main server: the tiny model loaded from its folder, small limits."
    app = create_app(model_dir, domain='industrial', **LIMITS)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield app, client

def metric(client, name, **labels) -> float:
    for fam in text_string_to_metric_families(client.get('/metrics').text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()): return s.value
    return 0.0

def error(r):
    body = r.json()
    assert set(body) == {'error'} and {'message', 'type', 'param', 'code'} <= set(body['error']), body
    return r.status_code, body['error']['message']


# ---------------------------------------------------------------- endpoints

def test_models_and_health(server):
    app, c = server
    m = c.get('/v1/models').json()['data'][0]
    assert m['id'] == 'tiny-model' and m['embedding_dim'] == 32 and m['max_text_length'] == 77 and m['image_size'] == [32, 32]
    assert c.get('/health/live').json() == {'status': 'ok'}
    r = c.get('/health/ready')
    assert r.status_code == 200 and r.json()['status'] == 'ok'

def test_embeddings_json(server, tiny):
    app, c = server
    r = c.post('/v1/embeddings', json={'input': ['a photo of a cat', 'x ' * 300], 'images': [IMG, IMG2], 'model': 'whatever'})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out['object'] == 'list' and out['model'] == 'tiny-model'
    assert [(d['index'], d['type'], d['object']) for d in out['data']] == [(0, 'text', 'embedding'), (1, 'text', 'embedding'), (2, 'image', 'embedding'), (3, 'image', 'embedding')]
    assert [d.get('truncated') for d in out['data']] == [False, True, None, None]
    assert out['usage']['truncated_texts'] == 1 and out['usage']['images'] == 2 and out['usage']['prompt_tokens'] > 77
    E = np.array([d['embedding'] for d in out['data']])
    assert E.shape == (4, 32) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    # the same numbers as the model run directly
    model, processor = tiny
    with torch.no_grad():
        ids = processor.tokenizer(['a photo of a cat'], return_tensors='pt')
        ref = model.get_text_features(**ids).pooler_output[0]
    assert np.allclose(E[0], torch.nn.functional.normalize(ref, dim=-1).numpy(), atol=1e-5)

def test_embeddings_base64_and_unnormalised(server):
    app, c = server
    f = c.post('/v1/embeddings', json={'input': 'hello', 'normalize': False}).json()['data'][0]['embedding']
    b = c.post('/v1/embeddings', json={'input': 'hello', 'normalize': False, 'encoding_format': 'base64'}).json()['data'][0]['embedding']
    assert np.allclose(np.frombuffer(base64.b64decode(b), dtype='<f4'), f, atol=1e-6)
    assert abs(np.linalg.norm(f) - 1) > 1e-3

def test_embeddings_multipart_matches_json(server):
    app, c = server
    img = synthetic_image(3, 40)
    j = c.post('/v1/embeddings', json={'images': [b64(img)], 'texts': ['a', 'b']}).json()
    r = c.post('/v1/embeddings', data={'texts': ['a', 'b'], 'normalize': 'true'}, files=[('images', ('x.png', png_bytes(img), 'image/png'))])
    assert r.status_code == 200, r.text
    assert np.allclose([d['embedding'] for d in r.json()['data']], [d['embedding'] for d in j['data']], atol=1e-5)
    bad = c.post('/v1/embeddings', files=[('images', ('x.png', b'garbage', 'image/png'))])
    assert bad.status_code == 400 and 'images[0]' in error(bad)[1]

def test_similarity(server):
    app, c = server
    r = c.post('/v1/similarity', json={'images': [IMG, IMG2], 'texts': ['a', 'b', 'c']})
    assert r.status_code == 200, r.text
    out = r.json()
    S, P = np.array(out['similarity']), np.array(out['probabilities'])
    assert S.shape == P.shape == (2, 3) and np.all(np.abs(S) <= 1 + 1e-5) and np.allclose(P.sum(1), 1, atol=1e-5)
    assert out['logit_scale'] > 0 and out['truncated'] == []

def test_classify(server):
    app, c = server
    r = c.post('/v1/classify', json={'images': [IMG, IMG2], 'labels': ['ok', 'hole', 'stain'], 'top_k': 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out['domain'] == 'industrial' and 'an inspection image of {}.' in out['templates']
    preds = out['data'][0]['predictions']
    assert len(preds) == 2 and {p['label'] for p in preds} <= {'ok', 'hole', 'stain'} and preds[0]['probability'] >= preds[1]['probability']
    r = c.post('/v1/classify', json={'images': [IMG], 'labels': ['a', 'b'], 'top_k': 10, 'domain': 'medical', 'templates': ['{} here']})
    assert r.status_code == 200 and len(r.json()['data'][0]['predictions']) == 2 and r.json()['templates'] == ['{} here']
    r = c.post('/v1/classify', data={'labels': ['ok', 'hole'], 'top_k': '1'}, files=[('images', ('x.png', png_bytes(synthetic_image(0, 64)), 'image/png'))])
    assert r.status_code == 200 and len(r.json()['data'][0]['predictions']) == 1


def test_classify_multipart_comma_labels(server):
    "A multipart labels=a,b,c field is three labels (as on the command line); a single label and repeated fields still work."
    app, c = server
    files = [('images', ('x.png', png_bytes(synthetic_image(0, 64)), 'image/png'))]
    def post(labels):
        r = c.post('/v1/classify', data={'labels': labels, 'top_k': '10'}, files=files)
        assert r.status_code == 200, r.text
        return {p['label']: p['probability'] for p in r.json()['data'][0]['predictions']}
    got = post('ok, hole,stain')
    assert sorted(got) == ['hole', 'ok', 'stain'], got
    assert abs(sum(got.values()) - 1) < 1e-5
    ref = c.post('/v1/classify', json={'images': [IMG], 'labels': ['ok', 'hole', 'stain'], 'top_k': 10}).json()['data'][0]['predictions']
    assert all(abs(got[p['label']] - p['probability']) < 1e-6 for p in ref), (got, ref)   # the same numbers as the JSON list
    assert post(['ok,hole', 'stain']) == got                      # repeated fields, each comma-separated
    assert sorted(post(' ok , ,hole ,')) == ['hole', 'ok']        # whitespace stripped, empty entries dropped
    assert list(post('hole')) == ['hole']                         # one label, no comma
    s, m = error(c.post('/v1/classify', data={'labels': ' , '}, files=files))
    assert s == 422 and 'labels' in m, m


# ---------------------------------------------------------------- bad input

BOMB = Image.new('L', (2000, 2000))   # 4 MP > the 1 MP cap, a few KB as PNG

BAD = {
    'corrupt png': ({'images': [IMG, raw_b64(png_bytes(synthetic_image(0, 64))[:60])]}, 400, 'images[1]'),
    'not an image': ({'images': [raw_b64(b'hello world, I am text')]}, 400, 'images[0]: not an image'),
    'empty': ({'images': ['data:image/png;base64,']}, 400, 'images[0]: the image is empty'),
    '1x1': ({'images': [b64(Image.new('RGB', (1, 1)))]}, 400, 'images[0]: the image is 1x1'),
    'unsupported media type': ({'images': [raw_b64(b'%PDF-1.4', 'application/pdf')]}, 400, "unsupported media type 'application/pdf'"),
    'svg': ({'images': [raw_b64(b'<svg xmlns="http://www.w3.org/2000/svg"/>', 'image/svg+xml')]}, 400, 'unsupported media type'),
    'bad base64': ({'images': ['data:image/png;base64,@@@@']}, 400, 'images[0]: not valid base64'),
    'url': ({'images': ['http://169.254.169.254/latest']}, 400, 'URLs are not fetched'),
    'bomb': ({'images': [b64(BOMB)]}, 400, 'above the limit of 1,000,000'),
    'too many items': ({'input': ['x'] * 5, 'images': [IMG] * 4}, 422, '9 items in one request; the limit is 8'),
    'nothing': ({}, 422, 'nothing to embed'),
    'unknown field': ({'imgs': [IMG]}, 422, 'imgs: Extra inputs are not permitted'),
    'wrong type': ({'images': 'not a list'}, 422, 'images'),
    'bad format': ({'input': 'x', 'encoding_format': 'int8'}, 422, 'encoding_format'),
}

@pytest.mark.parametrize('case', list(BAD))
def test_bad_embeddings_input(server, case):
    app, c = server
    body, status, msg = BAD[case]
    r = c.post('/v1/embeddings', json=body)
    s, m = error(r)
    assert s == status and msg in m, (s, m)

def test_bad_requests_other_endpoints(server):
    app, c = server
    assert error(c.post('/v1/classify', json={'images': [IMG], 'labels': ['a'], 'domain': 'astrology'}))[0] == 422
    s, m = error(c.post('/v1/classify', json={'images': [IMG], 'labels': ['a'], 'templates': ['no slot']}))
    assert s == 422 and "'{}' exactly once" in m
    assert error(c.post('/v1/classify', json={'images': [IMG], 'labels': []}))[0] == 422
    assert error(c.post('/v1/classify', json={'images': [IMG], 'labels': ['a'], 'top_k': 0}))[0] == 422
    assert error(c.post('/v1/similarity', json={'images': [IMG], 'texts': []}))[0] == 422
    s, m = error(c.post('/v1/similarity', json={'images': [IMG, 'data:image/png;base64,AAAA'], 'texts': ['a']}))
    assert s == 400 and m.startswith('images[1]')
    assert error(c.post('/v1/embeddings', content=b'{"input": ', headers={'content-type': 'application/json'}))[0] == 400
    assert error(c.post('/v1/embeddings', content=b'[1, 2]', headers={'content-type': 'application/json'}))[0] == 422
    assert error(c.post('/v1/embeddings', content=b'\xff\xfe', headers={'content-type': 'application/json'}))[0] == 400
    assert error(c.post('/v1/embeddings', content=b'input=x', headers={'content-type': 'application/x-www-form-urlencoded'}))[0] == 415
    assert c.get('/v1/embeddings').status_code == 405 and c.get('/nowhere').status_code == 404

def test_body_cap(server):
    app, c = server
    before = metric(c, 'clip_requests_total', route='/v1/embeddings', status='413')
    s, m = error(c.post('/v1/embeddings', json={'input': ['x' * 1000] * 400}))
    assert s == 413 and '300,000 bytes' in m
    def chunks():                         # no Content-Length: counted as it streams
        yield b'{"input": ["'
        for _ in range(100): yield b'y' * 10_000
        yield b'"]}'
    s, m = error(c.post('/v1/embeddings', content=chunks(), headers={'content-type': 'application/json'}))
    assert s == 413
    assert metric(c, 'clip_requests_total', route='/v1/embeddings', status='413') == before + 2
    assert c.post('/v1/embeddings', json={'input': 'still fine'}).status_code == 200

def test_bad_item_fails_only_its_request(server):
    "Good and bad requests at once: every good one succeeds, every bad one gets its 400, the server keeps going."
    app, c = server
    async def go():
        async with httpx.AsyncClient(base_url=str(c.base_url), timeout=TIMEOUT) as ac:
            bodies = [{'images': [IMG, IMG2]} if k % 3 else {'images': [IMG, raw_b64(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)]} for k in range(24)]
            return await asyncio.gather(*[ac.post('/v1/embeddings', json=b) for b in bodies])
    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200 if k % 3 else 400 for k in range(24)]
    assert c.get('/health/ready').status_code == 200


def test_concurrent_texts_keep_their_truncation(server):
    "Tokenization in parallel threads: every long text flagged and cut to 77 tokens, every short one untouched."
    app, c = server
    async def go():
        async with httpx.AsyncClient(base_url=str(c.base_url), timeout=TIMEOUT) as ac:
            return await asyncio.gather(*[ac.post('/v1/embeddings', json={'input': ['w ' * (10 + 300 * (k % 2)), 'short']}) for k in range(24)])
    rs = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs)
    assert [[d['truncated'] for d in r.json()['data']] for r in rs] == [[bool(k % 2), False] for k in range(24)]

def test_classify_prompt_cap(server):
    app, c = server
    s, m = error(c.post('/v1/classify', json={'images': [IMG], 'labels': ['a'] * 200, 'templates': ['{}'] * 30}))
    assert s == 422 and '6000 prompts' in m


# ---------------------------------------------------------------- load, timeouts, health

@pytest.fixture
def slow_server(tiny):
    "A server whose model takes 0.15 s per batch of one item, with a queue of 4 items."
    app = create_app(*tiny, max_batch_size=1, max_queue=4, max_items=4, request_timeout_s=20, ready_cache_s=0)
    be = app.state.server.backend
    fast = be.image_features
    def slow(px): time.sleep(0.15); return fast(px)
    be.image_features = slow
    with serve_in_thread(app) as url:
        yield app, url, be, fast

def test_overload_429_then_recovery(slow_server):
    app, url, be, fast = slow_server
    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as ac:
            return await asyncio.gather(*[ac.post('/v1/embeddings', json={'images': [IMG, IMG2]}) for _ in range(10)])
    rs = asyncio.run(burst())
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
    refused = [r for r in rs if r.status_code == 429]
    assert all(int(r.headers['Retry-After']) >= 1 for r in refused)
    assert refused[0].json()['error']['type'] == 'rate_limit_error'
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:     # load gone: served again
        assert c.post('/v1/embeddings', json={'images': [IMG]}).status_code == 200
        assert metric(c, 'clip_rejected_total', reason='queue_full') == len(refused)
        assert metric(c, 'clip_queue_depth') == 0

def test_timeout_504_then_recovery(tiny):
    app = create_app(*tiny, request_timeout_s=0.3)
    be = app.state.server.backend
    fast = be.image_features
    be.image_features = lambda px: (time.sleep(1.0), fast(px))[1]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        s, m = error(c.post('/v1/embeddings', json={'images': [IMG]}))
        assert s == 504 and 'longer than 0.3 s' in m
        be.image_features = fast
        time.sleep(1.0)                  # the abandoned batch finishes in the background
        assert c.post('/v1/embeddings', json={'images': [IMG]}).status_code == 200

def test_readiness_follows_a_broken_model(server):
    app, c = server
    be = app.state.server.backend
    good = be.text_features
    def broken(*a, **k): raise RuntimeError('weights corrupted')
    be.text_features = broken
    try:
        r = c.get('/health/ready')
        assert r.status_code == 503 and 'weights corrupted' in r.json()['reason']
        s, m = error(c.post('/v1/embeddings', json={'input': 'x'}))
        assert s == 503 and 'weights corrupted' in m
        assert c.post('/v1/embeddings', json={'images': [IMG]}).status_code == 200   # the image tower still works
        assert c.get('/health/live').status_code == 200
    finally: be.text_features = good
    assert c.get('/health/ready').status_code == 200
    assert c.post('/v1/embeddings', json={'input': 'x'}).status_code == 200

def test_metrics_move(server):
    app, c = server
    n0 = metric(c, 'clip_requests_total', route='/v1/similarity', status='200')
    i0, b0 = metric(c, 'clip_items_total', kind='image'), metric(c, 'clip_batch_size_count')
    q0, c0 = metric(c, 'clip_queue_seconds_count'), metric(c, 'clip_compute_seconds_count', kind='image')
    assert c.post('/v1/similarity', json={'images': [IMG, IMG2, IMG], 'texts': ['a']}).status_code == 200
    assert metric(c, 'clip_requests_total', route='/v1/similarity', status='200') == n0 + 1
    assert metric(c, 'clip_items_total', kind='image') == i0 + 3
    assert metric(c, 'clip_batch_size_count') > b0 and metric(c, 'clip_queue_seconds_count') >= q0 + 4
    assert metric(c, 'clip_compute_seconds_count', kind='image') > c0
    text = c.get('/metrics').text
    for name in ('clip_in_flight_requests', 'clip_queue_depth', 'clip_request_seconds_bucket', 'clip_batch_size_bucket'): assert name in text
    assert metric(c, 'clip_requests_total', route='other', status='404') >= 0

def test_api_key(tiny):
    app = create_app(*tiny, api_key='s3cret')
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        assert error(c.post('/v1/embeddings', json={'input': 'x'}))[0] == 401
        r = c.post('/v1/embeddings', json={'input': 'x'}, headers={'X-API-Key': 'wrong'})
        assert r.status_code == 401 and r.headers['WWW-Authenticate'] == 'Bearer'
        assert c.post('/v1/embeddings', json={'input': 'x'}, headers={'X-API-Key': 's3cret'}).status_code == 200
        assert c.post('/v1/embeddings', json={'input': 'x'}, headers={'Authorization': 'Bearer s3cret'}).status_code == 200
        assert c.get('/metrics').status_code == 401 and c.get('/v1/models').status_code == 401
        assert c.get('/health/live').status_code == 200 and c.get('/health/ready').status_code == 200

def test_onnx_backend_matches_torch(tiny, tmp_path):
    pytest.importorskip('onnxruntime')
    ex = pytest.importorskip('clip_workbench.export')
    model, processor = tiny
    folder = save_model(model, processor, tmp_path/'m')
    ex.export_onnx(model, folder/'onnx', processor)
    body = {'input': ['a photo of a cat', 'x ' * 200], 'images': [IMG, IMG2]}
    out = {}
    for backend in ('torch', 'onnx'):
        app = create_app(folder, backend=backend)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as c:
            assert c.get('/v1/models').json()['data'][0]['backend'] == backend
            r = c.post('/v1/embeddings', json=body)
            assert r.status_code == 200, r.text
            out[backend] = np.array([d['embedding'] for d in r.json()['data']])
    cos = (out['torch'] * out['onnx']).sum(1)
    assert cos.min() > 0.9999, cos
    with pytest.raises(OSError, match='no ONNX export'): create_app(tmp_path/'nothing-here', backend='onnx')


# ---------------------------------------------------------------- fuzz

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=30))
json_any = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)), max_leaves=12)
image_str = st.one_of(st.just(IMG), st.just(IMG2), st.text(max_size=40), st.binary(max_size=60).map(raw_b64),
                      st.sampled_from(['data:image/png;base64,', 'data:,', 'data:image/png,abc', 'data:image/png;base64', 'AAAA']))
str_list = st.one_of(st.lists(st.text(max_size=40), max_size=10), json_any)
FIELDS = {
    '/v1/embeddings': dict(input=st.one_of(st.text(max_size=50), str_list), texts=str_list, images=st.one_of(st.lists(image_str, max_size=10), json_any),
                           encoding_format=st.one_of(st.sampled_from(['float', 'base64']), json_any), normalize=json_any, model=json_any, user=json_any),
    '/v1/similarity': dict(images=st.one_of(st.lists(image_str, max_size=5), json_any), texts=str_list),
    '/v1/classify': dict(images=st.one_of(st.lists(image_str, max_size=5), json_any), labels=str_list, top_k=st.one_of(st.integers(-5, 50), json_any),
                         domain=st.one_of(st.sampled_from(['general', 'medical', 'nope']), json_any),
                         templates=st.one_of(st.lists(st.text(max_size=20).map(lambda s: s + '{}'), max_size=3), str_list)),
}

@st.composite
def requests(draw):
    path = draw(st.sampled_from(list(FIELDS)))
    fields = FIELDS[path]
    keys = draw(st.lists(st.sampled_from(list(fields)), unique=True, max_size=len(fields)))
    body = {k: draw(fields[k]) for k in keys}
    if draw(st.booleans()): body.update(draw(st.dictionaries(st.text(max_size=6), json_any, max_size=2)))
    return path, draw(st.one_of(st.just(body), json_any)) if draw(st.integers(0, 9)) == 0 else body

@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests())
def test_fuzz_never_5xx(server, req):
    app, c = server
    path, body = req
    r = c.post(path, content=json.dumps(body).encode(), headers={'content-type': 'application/json'})
    assert r.status_code < 500, (path, body, r.status_code, r.text[:300])
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])

def test_server_healthy_after_fuzz(server):
    app, c = server
    assert c.get('/health/ready').status_code == 200
    assert metric(c, 'clip_queue_depth') == 0 and metric(c, 'clip_in_flight_requests') == 1   # this /metrics request itself
