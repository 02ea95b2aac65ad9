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
