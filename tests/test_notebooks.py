"Notebook hygiene that nbdev itself does not check."
import ast, json
from pathlib import Path

import pytest

NBS = sorted(p for p in (Path(__file__).parents[1] / 'nbs').rglob('*.ipynb') if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts)

def _has(tree, types): return any(isinstance(n, types) for n in ast.walk(tree))

@pytest.mark.parametrize('nb', NBS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_imports_stand_alone(nb):
    "nbdev's docs processing executes every cell that imports; such a cell must not also run example code."
    bad = []
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or '#| export' in src or 'eval: false' in src: continue
        try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
        except SyntaxError: continue
        if _has(tree, (ast.Import, ast.ImportFrom)) and _has(tree, (ast.Expr, ast.Assign)): bad.append(f'cell {i}: {src.splitlines()[0][:70]}')
    assert not bad, f'{nb.name}: put imports in their own cell:\n' + '\n'.join(bad)
