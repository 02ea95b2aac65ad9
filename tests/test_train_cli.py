"Training from the command line, end to end on the tiny model and the bundled sample set; kill -9 and resume."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest, torch

BIN = Path(sys.executable).parent / 'clip-workbench'
ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
SAMPLE = Path(__file__).parents[1] / 'data' / 'sample'

def tiny_args(out, epochs=2, *extra):
    sets = dict(model_name='tiny', data_path=str(SAMPLE), image_resolution=32, batch_size=4, num_epochs=epochs, val_split=0.25,
                test_split=0.25, output_dir=str(out), device='cpu', mixed_precision='no', logging_steps=1, domain='industrial')
    return ['train', *[a for k, v in sets.items() for a in ('--set', f'{k}={v}')], *extra]

def run(*args, timeout=600):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout, env=ENV)

def test_train_end_to_end(tmp_path):
    r = run(*tiny_args(tmp_path / 'run'))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index('{'):])
    assert summary['epochs'] == 2 and 0 <= summary['test']['accuracy'] <= 1
    files = {p.name for p in (tmp_path / 'run').iterdir()}
    assert {'config.yaml', 'final', 'best', 'checkpoints', 'log.csv', 'history.png', 'eval'} <= files
    assert (tmp_path / 'run' / 'eval' / 'results.json').is_file()

def test_bad_config_value_stops_before_training(tmp_path):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model_name: tiny\nnum_epochs: 0\n')
    r = run('train', '--config', str(cfg))
    assert r.returncode == 2 and "config field 'num_epochs': got 0; allowed: an integer >= 1" in r.stderr
    assert 'Traceback' not in r.stderr

def test_kill_9_then_resume(tmp_path):
    out = tmp_path / 'run'
    args = tiny_args(out, 40, '--set', 'save_steps=1')
    p = subprocess.Popen([str(BIN), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ckpts = out / 'checkpoints'
    deadline = time.time() + 300
    while time.time() < deadline and len(list(ckpts.glob('checkpoint-*.pt'))) < 2 and p.poll() is None: time.sleep(0.05)
    time.sleep(0.3)
    assert p.poll() is None, 'training ended before it could be killed'
    os.kill(p.pid, signal.SIGKILL); p.wait()
    found = sorted(ckpts.glob('checkpoint-*.pt'), key=lambda q: int(q.stem.split('-')[1]))
    assert found, 'no checkpoint written'
    for q in found: torch.load(q, weights_only=False)  # every checkpoint on disk is complete
    killed_at = torch.load(found[-1], weights_only=False)['position']['step']
    r = run(*args, '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(l) for l in (out / 'log.jsonl').read_text().splitlines()]
    steps = [row['step'] for row in log]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] > killed_at  # no step lost or repeated
    assert log[-1]['epoch'] == 39  # and the run went to its end

def test_evaluate_and_predict(tmp_path):
    r = run('evaluate', 'tiny', str(SAMPLE), '--out', str(tmp_path / 'ev'), '--metrics', 'zero_shot,retrieval', '--quiet', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / 'ev' / 'results.json').is_file() and list((tmp_path / 'ev').glob('*.png'))
    r = run('evaluate', 'tiny', str(SAMPLE), '--metrics', 'accuracy_at_5')
    assert r.returncode == 2 and 'accuracy_at_5' in r.stderr and 'zero_shot' in r.stderr
    r = run('evaluate', 'tiny', str(tmp_path / 'nowhere'))
    assert r.returncode == 2 and 'nowhere' in r.stderr
    r = run('predict', 'tiny', str(SAMPLE / 'images'), '--labels', 'nominal,local defect,global defect', '--top-k', '1', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 12 and all(len(x['labels']) == 1 for x in rows)

def test_yaml_config_with_every_optional_field(tmp_path):
    "One YAML config turns on every capability the config reaches: each leaves its trace in the run folder or the summary."
    dom = tmp_path / 'looms.yaml'
    dom.write_text('name: looms\ndescription: woven fabric on a loom\ntemplates: ["a loom photo of {}."]\naugmentation: geometric\n')
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text(f"""model_name: tiny
data_path: {SAMPLE}
domain: {dom}
image_resolution: 32
batch_size: 4
num_epochs: 3
val_split: 0.25
test_split: 0.25
device: cpu
mixed_precision: 'no'
output_dir: {tmp_path / 'run'}
loss: focal
loss_kwargs: {{gamma: 1.0}}
sampler: balanced
gradient_checkpointing: true
attention_chunk_size: 4
early_stopping: {{metric: accuracy, patience: 5}}
log_to: tensorboard
wise_ft: [0.0, 0.5, 1.0]
tune_loss: {{space: {{gamma: [0.5, 2.0]}}, n_trials: 2, budget: 3}}
""")
    r = run('train', '--config', str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index('{'):])
    out = tmp_path / 'run'
    saved = (out / 'config.yaml').read_text()
    assert 'loss: focal' in saved and 'sampler: balanced' in saved and str(dom) in saved
    assert summary['loss_kwargs']['gamma'] in (0.5, 2.0)                        # tune_loss chose one of its two trials
    assert json.loads((out / 'tune_loss.json').read_text())['best_params'] == {'gamma': summary['loss_kwargs']['gamma']}
    assert list((out / 'tensorboard').glob('events.out.tfevents.*'))             # log_to
    assert [row['alpha'] for row in summary['wise_ft']['sweep']] == [0.0, 0.5, 1.0] and 'test' in summary['wise_ft']
    assert (out / 'wise_ft' / 'config.json').is_file() and (out / 'eval_wise_ft' / 'results.json').is_file()
    assert summary['stopped_early'] is False and summary['epochs'] == 3       # patience 5 never ran out in 3 epochs
    assert 'sampler' in (out / 'recipe.txt').read_text()

def test_bad_loss_setting_stops_before_anything_is_written(tmp_path):
    "A bad loss is refused before the model loads; a loss the data cannot serve, once the data is read: either way nothing is written."
    captions = tmp_path / 'captions.csv'  # free captions, no labels
    captions.write_text('image_path,caption\n' + ''.join(f'{SAMPLE / "images" / p.name},a photo number {i}\n'
                                                          for i, p in enumerate(sorted((SAMPLE / 'images').glob('*.jpg'))[:8])))
    out = tmp_path / 'run'
    for sets, says in [(['loss=combined'], "config field 'loss_kwargs': loss 'combined' needs"),
                       (['loss=focal', f'data_path={captions}'], "config field 'loss': 'focal' scores each image against its class prompts and needs labels")]:
        r = run(*tiny_args(out), *[a for s in sets for a in ('--set', s)])
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert not out.exists()
