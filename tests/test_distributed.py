"Training from the command line on two processes (torchrun, gloo on the CPU), end to end on the tiny model."
import json, os, subprocess, sys
from pathlib import Path

import torch

from test_train_cli import ENV, tiny_args

def torchrun(*args, n=2, timeout=600):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', '-m', 'clip_workbench.cli', *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV)

def test_train_on_two_processes(tmp_path):
    out = tmp_path / 'run'
    r = torchrun(*tiny_args(out, 2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"output_dir"') == 1  # one summary: the first process reports
    summary = json.loads(r.stdout[r.stdout.index('{'):])
    assert summary['processes'] == 2 and summary['batch_size'] == 4 and summary['epochs'] == 2
    assert {'config.yaml', 'final', 'checkpoints', 'log.csv', 'eval'} <= {p.name for p in out.iterdir()}
    log = [json.loads(l) for l in (out / 'log.jsonl').read_text().splitlines()]
    assert [row['step'] for row in log] == list(range(1, len(log) + 1))  # one log, written once per step
    ckpt = torch.load(sorted((out / 'checkpoints').glob('checkpoint-*.pt'))[-1], weights_only=False)
    assert ckpt['position']['epoch'] == 2

def test_batch_not_divisible_by_processes(tmp_path):
    r = torchrun(*tiny_args(tmp_path / 'run', 1, '--set', 'batch_size=3'))
    assert r.returncode != 0 and "batch_size 3 is not divisible by the 2 processes" in r.stderr

def test_resume_on_two_processes(tmp_path):
    out = tmp_path / 'run'
    args = lambda epochs, *extra: tiny_args(out, epochs, '--set', 'batch_size=2', '--set', 'save_steps=1', *extra)
    assert torchrun(*args(2)).returncode == 0
    r = torchrun(*args(4, '--resume'))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(l)['step'] for l in (out / 'log.jsonl').read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and json.loads(r.stdout[r.stdout.index('{'):])['epochs'] == 4  # continued, nothing repeated
