"Loading models the way users bring them: a Hugging Face VisionTextDualEncoderModel folder, and a model by name from the local Hugging Face cache."
import hashlib, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import numpy as np, pytest, torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (BertConfig, CLIPModel, CLIPProcessor, ViTConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel,
                          VisionTextDualEncoderProcessor)

from clip_workbench.models import clip_image_processor, image_features, load_model, minilm_tokenizer, save_model, text_features, tiny_clip

CAPTIONS = ['a plain woven textile', 'a textile with a small dark stain near the edge', 'a fold']

def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(n)]

def _tiny_vtde(seed=0):
    "A tiny random-init VisionTextDualEncoderModel (ViT + BERT) built offline from configs, and its processor."
    tok = minilm_tokenizer(32)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(ViTConfig(image_size=32, patch_size=8, **common),
                                                                  BertConfig(vocab_size=len(tok), max_position_embeddings=64, **common),
                                                                  projection_dim=24)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTextDualEncoderModel(config).eval()
    return model, VisionTextDualEncoderProcessor(image_processor=clip_image_processor(32), tokenizer=tok)

def _features(model, batch):
    with torch.no_grad():
        return image_features(model, batch['pixel_values']), text_features(model, batch['input_ids'], batch['attention_mask'])

@pytest.mark.parametrize('writer', ['save_pretrained', 'save_model'])
def test_vision_text_dual_encoder_folder(tmp_path, writer):
    "A VisionTextDualEncoderModel folder (as transformers or save_model writes it) loads back with its processor and the same features."
    model, processor = _tiny_vtde()
    folder = tmp_path / 'vtde'
    if writer == 'save_pretrained': model.save_pretrained(folder); processor.save_pretrained(folder)
    else: save_model(model, processor, folder)
    assert (folder / 'config.json').is_file()
    loaded, proc = load_model(folder, device='cpu')
    assert type(loaded) is VisionTextDualEncoderModel and not loaded.training
    assert isinstance(proc, VisionTextDualEncoderProcessor)
    batch = proc(text=CAPTIONS, images=_images(), return_tensors='pt', padding=True, truncation=True)
    ref_batch = processor(text=CAPTIONS, images=_images(), return_tensors='pt', padding=True, truncation=True)
    for k in ('pixel_values', 'input_ids', 'attention_mask'): torch.testing.assert_close(batch[k], ref_batch[k], rtol=0, atol=0)
    (img, txt), (ref_img, ref_txt) = _features(loaded, batch), _features(model, ref_batch)
    assert img.shape == (3, 24) and txt.shape == (3, 24)
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-6)
    torch.testing.assert_close(txt, ref_txt, rtol=0, atol=1e-6)
    state = loaded.state_dict()
    assert sorted(state) == sorted(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(loaded.logit_scale, model.logit_scale)

def _hub_cache(root:Path, repo_id:str, folder:Path) -> str:
    "Lay out `folder` as huggingface_hub's cache holds a downloaded repo: blobs by hash, a snapshot of symlinks, refs/main; returns the commit."
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / commit
    for f in sorted(p for p in folder.rglob('*') if p.is_file()):
        blob = repo / 'blobs' / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    return commit

LOAD_BY_NAME = textwrap.dedent('''
    import sys, huggingface_hub
    from safetensors.torch import save_file
    from clip_workbench.models import load_model
    model, processor = load_model(sys.argv[1], device='cpu')
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
    print(type(model).__name__, type(processor).__name__, huggingface_hub.try_to_load_from_cache(sys.argv[1], 'config.json'))
''')

def _load_by_name(name:str, cache:Path, out:Path, home:Path):
    "Run load_model(name) in a fresh process whose Hugging Face cache is `cache`, offline (huggingface_hub reads these at import)."
    env = {k: v for k, v in os.environ.items() if k not in ('HUGGINGFACE_HUB_CACHE', 'TRANSFORMERS_CACHE', 'HF_HUB_CACHE', 'HF_HOME')}
    env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(home), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', LOAD_BY_NAME, name, str(out)], capture_output=True, text=True, timeout=300, env=env)

def test_load_by_name_from_local_hf_cache(tmp_path):
    "With HF_HUB_OFFLINE=1, `load_model('someorg/tiny-clip')` reads the weights from the Hugging Face cache."
    model, processor = tiny_clip(seed=3)
    save_model(model, processor, tmp_path / 'saved')
    cache = tmp_path / 'hub'
    commit = _hub_cache(cache, 'someorg/tiny-clip', tmp_path / 'saved')
    r = _load_by_name('someorg/tiny-clip', cache, tmp_path / 'loaded.safetensors', tmp_path / 'hf_home')
    assert r.returncode == 0, r.stderr[-3000:]
    cls, proc_cls, config_path = r.stdout.strip().splitlines()[-1].split()
    assert (cls, proc_cls) == ('CLIPModel', 'CLIPProcessor')
    assert Path(config_path) == cache / 'models--someorg--tiny-clip' / 'snapshots' / commit / 'config.json'
    loaded, saved = load_file(tmp_path / 'loaded.safetensors'), model.state_dict()
    assert sorted(loaded) == sorted(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

def test_name_missing_from_cache_fails_offline(tmp_path):
    "The same load with the name absent from the cache fails at once, naming the cache and how to bring the weights."
    (tmp_path / 'empty').mkdir()
    r = _load_by_name('someorg/tiny-clip', tmp_path / 'empty', tmp_path / 'loaded.safetensors', tmp_path / 'hf_home')
    assert r.returncode != 0 and not (tmp_path / 'loaded.safetensors').exists()
    assert "cannot load 'someorg/tiny-clip': it is not a local folder and not in the Hugging Face cache" in r.stderr
    assert str(tmp_path / 'empty') in r.stderr
