"Sphinx configuration of the offline docs site (built by nbs/_sphinx/build_docs.py; see the `docs_site` page)."
import importlib.util, shutil, sys
from pathlib import Path

from docutils import nodes
from nbdev.config import get_config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_docs import pandoc_id
cfg = get_config(path=HERE.parents[1])
site_url = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/'

project = cfg.title
author = cfg.author
copyright = cfg.copyright
release = version = cfg.version
root_doc = 'index'
exclude_patterns = ['**.ipynb_checkpoints']

extensions = ['myst_nb', 'sphinx.ext.githubpages']  # githubpages: .nojekyll, so GitHub Pages serves _static/

# Notebooks: saved outputs only, never executed; Markdown outputs (show_doc, benchmark tables) read as MyST
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget manager from a CDN: the site works offline
myst_enable_extensions = ['dollarmath', 'amsmath', 'attrs_inline', 'attrs_block', 'colon_fence', 'strikethrough', 'tasklist']
myst_dmath_double_inline = True
myst_all_links_external = True  # build_docs.py already made every link a relative .html link, as Quarto's site has them
suppress_warnings = ['myst.header', 'myst.strikethrough', 'misc.highlighting_failure', 'mystnb.unknown_mime_type']

# Math: MathJax 3 served from the site itself (sphinx-mathjax-offline's files), not a CDN
mathjax_path = 'mathjax/tex-chtml-full.js'

html_theme = 'furo'
html_title = cfg.title
html_baseurl = site_url
html_static_path = ['static']
html_css_files = ['nbdev.css']
html_favicon = 'static/favicon.svg'
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {'sidebar_hide_name': False, 'navigation_with_keys': True}


def add_quarto_ids(app, doctree):
    "Give every section Quarto's id too (docutils turns `get_loss` into `get-loss`), so nbdev's links land on it."
    used = {i for n in doctree.findall(nodes.Element) for i in n.get('ids', [])}
    for sec in doctree.findall(nodes.section):
        title = sec.next_node(nodes.title)
        if title is None: continue
        i = pandoc_id(title.astext())
        if i not in used: sec['ids'].append(i); used.add(i)


def copy_mathjax(app, exc):
    "MathJax's one-file TeX build and its fonts, from the sphinx-mathjax-offline package (only what a page loads)."
    if exc is not None or app.builder.format != 'html': return
    spec = importlib.util.find_spec('sphinx-mathjax-offline')
    if spec is None: raise RuntimeError('sphinx-mathjax-offline is not installed: pip install -e ".[dev]"')
    src = Path(next(iter(spec.submodule_search_locations))) / 'static' / 'mathjax'
    dest = Path(app.outdir) / '_static' / 'mathjax'
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / 'tex-chtml-full.js', dest)
    shutil.copytree(src / 'output' / 'chtml' / 'fonts', dest / 'output' / 'chtml' / 'fonts', dirs_exist_ok=True)


def setup(app):
    app.connect('doctree-read', add_quarto_ids)
    app.connect('build-finished', copy_mathjax)
