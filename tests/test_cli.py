"The `clip-workbench` entry point, run as a user runs it: a subprocess."
import json, os, subprocess, sys
from pathlib import Path

import pytest

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
