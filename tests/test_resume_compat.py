"Resume from a checkpoint written by an older version of the code (tests/data/pre_refactor_checkpoint, see its README)."
import json, random, shutil
from pathlib import Path

import numpy as np, pytest, torch

from clip_workbench.data import ImageTextDataset, make_augmentation, make_dataloader, sample_records
from clip_workbench.losses import CLIPContrastiveLoss
from clip_workbench.models import lock_tower, tiny_clip
from clip_workbench.train import (BestModelCallback, CheckpointCallback, EarlyStopping, EvalCallback, ResolutionSchedule,
                                  Trainer)

DATA = Path(__file__).parent / 'data' / 'pre_refactor_checkpoint'
CKPT = DATA / 'checkpoint-4.pt'

def score(model):
    "The run's made-up metric: it depends on the weights only, so a resumed run computes the same values."
    return dict(accuracy=float(model.visual_projection.weight.norm()) % 1.0)

def setup(folder):
    "The run that wrote the checkpoint, built again with today's code (the README has the script that wrote it)."
    model, proc = tiny_clip(seed=0)
    lock_tower(model, 'text', unlocked_layers=1)
    ds = ImageTextDataset(sample_records(), proc, augment=make_augmentation('default'), seed=0)
    dl = make_dataloader(ds, batch_size=4, shuffle=True, seed=0)
    cbs = [ResolutionSchedule({0: 16, 1: 24}), EvalCallback(score, every_steps=2), BestModelCallback('accuracy'),
           EarlyStopping('accuracy', patience=10, min_delta=0.01), CheckpointCallback(folder, every_steps=2, keep_last=1)]
    return Trainer(model, CLIPContrastiveLoss(), dl, num_epochs=3, lr=1e-3, warmup_steps=2, seed=0, callbacks=cbs)

def by_type(t, cls): return next(c for c in t.callbacks if type(c) is cls)

@pytest.fixture
def folder(tmp_path):
    torch.set_num_threads(1)
    shutil.copy(CKPT, tmp_path / CKPT.name)
    return tmp_path

@pytest.fixture(scope='module')
def saved(): return torch.load(CKPT, map_location='cpu', weights_only=False)

@pytest.fixture(scope='module')
def full_run(): return json.loads((DATA / 'full_run.json').read_text())

def test_checkpoint_format(saved):
    assert set(saved) == {'model', 'loss', 'optimizer', 'scheduler', 'precision', 'rng', 'position', 'history', 'metrics',
                          'strategy', 'callbacks'}
    assert saved['position'] == dict(epoch=1, step=4, batch_in_epoch=1, n_skipped_steps=0, resolution=24)
    assert set(saved['rng']) == {'python', 'numpy', 'torch'}
    assert list(saved['callbacks'])[:5] == ['0:ResolutionSchedule', '1:EvalCallback', '2:BestModelCallback', '3:EarlyStopping',
                                            '4:CheckpointCallback']

def test_restores_position_weights_optimizer_and_callbacks(folder, saved):
    t = setup(folder)
    assert t.load_checkpoint(folder) == folder / CKPT.name  # a folder: its latest checkpoint
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    assert (t.epoch, t.step, t.batch_in_epoch, t.n_skipped_steps, t.resolution) == (1, 4, 1, 0, 24)
    assert t.model.vision_model.embeddings.position_embedding.weight.shape[0] == 10  # resized to 24 px: 3x3 patches + class
    state = t.model.state_dict()
    for k, v in saved['model'].items(): assert torch.equal(state[k], v), k
    opt = t.opt.state_dict()
    assert [g['lr'] for g in opt['param_groups']] == saved['scheduler']['_last_lr']
    assert len(opt['state']) == len(saved['optimizer']['state']) > 0
    for i, s in saved['optimizer']['state'].items():
        for k in ('step', 'exp_avg', 'exp_avg_sq'): assert torch.equal(opt['state'][i][k], s[k]), (i, k)
    assert t.sched.last_epoch == saved['scheduler']['last_epoch'] == 4
    assert t.history == saved['history'] and t.metrics == saved['metrics']
    best, stop = by_type(t, BestModelCallback), by_type(t, EarlyStopping)
    assert (best.best, best.best_step) == (saved['metrics']['accuracy'], 4)
    assert (stop.best, stop.bad) == (saved['callbacks']['3:EarlyStopping']['best'], 1)
    assert torch.equal(rng[0], saved['rng']['torch']) and rng[1] == saved['rng']['python']
    assert np.array_equal(rng[2][1], saved['rng']['numpy'][1])

def test_training_continues_as_the_uninterrupted_run(folder, full_run):
    t = setup(folder)
    hist = t.fit(resume_from=folder)
    want = full_run['history']
    assert [r['step'] for r in hist] == [r['step'] for r in want] == list(range(1, 10))
    assert [r['epoch'] for r in hist] == [r['epoch'] for r in want]
    for got, exp in zip(hist, want):
        assert set(got) == set(exp), got['step']
        for k, v in exp.items(): assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (got['step'], k)
    best, stop = by_type(t, BestModelCallback), by_type(t, EarlyStopping)
    assert best.best_step == full_run['callbacks']['BestModelCallback']['best_step'] == 8
    assert best.best == pytest.approx(full_run['callbacks']['BestModelCallback']['best'], rel=1e-4)
    assert stop.bad == full_run['callbacks']['EarlyStopping']['bad'] == 3
    assert sorted(p.name for p in folder.iterdir()) == ['checkpoint-8.pt']  # the run kept checkpointing (keep_last=1)
