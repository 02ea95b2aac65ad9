"ONNX export: what the notebook cannot hold well (failure half-way, threads, the optional dynamo exporter)."
import importlib.util, json
from concurrent.futures import ThreadPoolExecutor

import pytest, torch

import clip_workbench.export as ex
from clip_workbench.core import ModelLoadError
from clip_workbench.models import image_features, text_features, tiny_clip


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    model, processor = tiny_clip()
    folder = tmp_path_factory.mktemp('onnx')/'tiny'
    ex.export_onnx(model, folder, processor)
    return model, processor, folder


def _inputs(processor):
    px = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tok = processor.tokenizer(['a red square.', 'stripes', 'a long caption about a textile with a hole', 'x'], padding=True, return_tensors='pt')
    return px, tok['input_ids'], tok['attention_mask']


def test_failed_reexport_keeps_the_old_export(tiny, monkeypatch, tmp_path):
    model, processor, folder = tiny
    dest = tmp_path/'out'
    ex.export_onnx(model, dest, processor)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    real = ex._onnx_export
    def fail_text(module, *args, **kw):
        if isinstance(module, ex.TextEncoder): raise RuntimeError('unsupported operator aten::frobnicate')
        return real(module, *args, **kw)
    monkeypatch.setattr(ex, '_onnx_export', fail_text)
    other = tiny_clip(seed=1)[0]
    with pytest.raises(ex.ExportError, match='text tower of CLIPModel.*aten::frobnicate'):
        ex.export_onnx(other, dest, processor)
    after = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert after == before  # no temporary files left, the old export untouched
    px, ids, mask = _inputs(processor)
    r = ex.check_onnx_parity(model, dest, px, ids, mask)
    assert r['image'] >= 0.9999 and r['text'] >= 0.9999


def test_incomplete_and_mixed_folders_are_named(tiny, tmp_path):
    model, processor, folder = tiny
    dest = tmp_path/'out'
    ex.export_onnx(model, dest, processor)
    man = json.loads((dest/ex.MANIFEST_FILE).read_text())
    (dest/ex.TEXT_FILE).write_bytes((dest/ex.TEXT_FILE).read_bytes() + b'\0')
    with pytest.raises(ModelLoadError, match='mixes two exports'): ex.OnnxEncoders(dest)
    (dest/ex.MANIFEST_FILE).unlink()
    with pytest.raises(ModelLoadError, match='incomplete export.*clip-workbench export MODEL_DIR'): ex.OnnxEncoders(dest)
    assert man['files'] == {'image': ex.IMAGE_FILE, 'text': ex.TEXT_FILE}


def test_one_instance_serves_many_threads(tiny):
    model, processor, folder = tiny
    enc = ex.OnnxEncoders(folder, threads=1)
    px, ids, mask = _inputs(processor)
    with torch.no_grad(): ref_i, ref_t = image_features(model, px), text_features(model, ids, mask)
    def work(i):
        n = 1 + i % 4
        return (torch.allclose(enc.image_features(px[:n]), ref_i[:n], atol=1e-4)
                and torch.allclose(enc.text_features(ids[:n], mask[:n]), ref_t[:n], atol=1e-4))
    with ThreadPoolExecutor(4) as pool: assert all(pool.map(work, range(24)))


@pytest.mark.skipif(importlib.util.find_spec('onnxscript') is None, reason='the dynamo exporter needs onnxscript')
def test_dynamo_exporter_parity(tiny, tmp_path):
    model, processor, _ = tiny
    man = ex.export_onnx(model, tmp_path/'dyn', processor, exporter='dynamo')
    assert man['exporter'] == 'dynamo' and not list((tmp_path/'dyn').glob('*.data'))  # one self-contained file per tower
    px, ids, mask = _inputs(processor)
    r = ex.check_onnx_parity(model, tmp_path/'dyn', px, ids, mask)
    assert r['image'] >= 0.9999 and r['text'] >= 0.9999, r
    r1 = ex.check_onnx_parity(model, tmp_path/'dyn', px[:1], ids[:1], mask[:1])
    assert r1['image'] >= 0.9999 and r1['text'] >= 0.9999, r1
