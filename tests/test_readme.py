"The README's config reference is the dataclass's own: regenerate it with `config_reference(markdown=True)` when this fails."
import json
from pathlib import Path

from clip_workbench.core import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_index_notebook_holds_the_config_reference():
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))['cells']
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    assert config_reference(markdown=True) in text, "nbs/index.ipynb's field table differs from config_reference(markdown=True): paste it again"


def test_readme_holds_the_config_reference():
    assert config_reference(markdown=True) in (ROOT/'README.md').read_text(encoding='utf-8'), "README.md is stale: run make readme"
