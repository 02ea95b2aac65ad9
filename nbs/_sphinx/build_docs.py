#!/usr/bin/env python
"""Build the docs site in `_docs/` offline, without Quarto (`make docs` runs this).

1. `nbdev_proc_nbs` writes nbdev's processed notebooks to `_proc/` (show_doc rendered, `#| hide` honoured),
   exactly as `nbdev_docs` would before handing them to Quarto (a `quarto` stub from .ci/bin is put on PATH).
2. Each processed notebook becomes a MyST-NB notebook in `_docs_build/src/`, at the path Quarto would give it
   (`output-file`: `nbs/03_losses.ipynb` -> `losses.html`), with the Quarto cell options applied
   (`echo: false` hides the code, `output: asis` puts show_doc's Markdown in the page, `include: false` drops the cell),
   the front matter turned into the page title and subtitle, and links to the published site made relative.
   The index page gets one toctree per folder, made from the notebooks present: no page list to keep by hand.
3. Sphinx with MyST-NB and the Furo theme renders them (saved outputs only: nothing is executed) into `_docs/`.
"""
import argparse, json, os, posixpath, re, shutil, subprocess, sys, time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD = ROOT / '_docs_build'
SRC = BUILD / 'src'
WIDGET = 'application/vnd.jupyter.widget-view+json'
SECTION_ORDER = {'': 0, 'tutorials': 1, 'benchmarks': 2}  # other folders follow, alphabetically


def settings():
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    return dict(nbs=Path(cfg.nbs_path), proc=Path(cfg.config_path) / '_proc', docs=Path(cfg.doc_path),
                site_url=f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/', title=cfg.title,
                description=cfg.description)


def run_proc_nbs():
    "nbdev's own processing, with the Quarto stub on PATH when Quarto is absent (nbdev would try to install it)."
    env = dict(os.environ)
    if not shutil.which('quarto', path=env.get('PATH')): env['PATH'] = f"{ROOT / '.ci' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    exe = Path(sys.executable).with_name('nbdev_proc_nbs')
    subprocess.run([str(exe) if exe.exists() else 'nbdev_proc_nbs'], cwd=ROOT, env=env, check=True)


def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def front_matter(nb):
    "The YAML of nbdev's raw front-matter cell (title, description, output-file), and the cells without it."
    for i, c in enumerate(nb['cells']):
        s = _src(c)
        if c['cell_type'] == 'raw' and s.lstrip().startswith('---'):
            return yaml.safe_load(s.strip().strip('-')) or {}, nb['cells'][:i] + nb['cells'][i + 1:]
    return {}, nb['cells']


def page_of(proc_rel, fm):
    "Where Quarto puts a notebook: its folder + `output-file` (numbers stripped by nbdev), without `.html`."
    from nbdev.doclinks import _nbpath2html
    name = fm.get('output-file') or _nbpath2html(Path(proc_rel)).name
    return (Path(proc_rel).parent / name).with_suffix('').as_posix()


def relative(target, page):
    "`target` ('tutorials/x.html#a') as a link from `page` ('losses')."
    path, _, frag = target.partition('#')
    rel = posixpath.relpath(path or 'index.html', posixpath.dirname(page) or '.')
    return rel + (f'#{frag}' if frag else '')


class Links:
    "Rewrites links: the published site's URLs and `.ipynb` paths become relative links inside the built site."
    def __init__(self, site_url, pages): self.site_url, self.pages = site_url, pages  # pages: 'nbs-relative.ipynb' -> page
    def __call__(self, text, page, nb_rel):
        site = re.escape(self.site_url)
        text = re.sub(site + r'([^\s)"\'<>]*)', lambda m: relative(m.group(1) or 'index.html', page), text)
        def nb_link(m):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(nb_rel), m.group(2)))
            if target not in self.pages: return m.group(0)
            return m.group(1) + relative(self.pages[target] + '.html' + (m.group(3) or ''), page)
        return re.sub(r'(\]\(|href=")(?!\w+://)([^)\s"#]+\.ipynb)(#[^)\s"]*)?', nb_link, text)


def quarto_link_attrs(md):
    "Pandoc link attributes (`[source](url){target=\"_blank\" style=...}`, show_doc's source link) as an HTML link."
    def repl(m):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(3)))
        attrs.pop('style', None)
        extra = ''.join(f' {k}="{v}"' for k, v in attrs.items())
        return f'<a class="nbdev-source" href="{m.group(2)}"{extra} rel="noopener">{m.group(1)}</a>'
    return re.sub(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}', repl, md)


def showdoc_md(md):
    "show_doc's Markdown as page Markdown: no leading rule (the heading separates entries), the source link as HTML."
    md = re.sub(r'^\s*---\s*\n', '', md)
    return quarto_link_attrs(md).strip() + '\n'


def directives(src):
    "Quarto cell options (`#| key: value`) at the top of a code cell, and the code without them."
    opts, lines = {}, src.splitlines()
    while lines and (m := re.match(r'\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$', lines[0])):
        opts[m.group(1)] = m.group(2).lower() or 'true'
        lines.pop(0)
    return opts, '\n'.join(lines)


def pandoc_id(text):
    "The id Quarto (pandoc's auto_identifiers) gives a heading, which nbdev's doc links point to (`#clipfinetuningconfig.override`)."
    s = re.sub(r'[^\w\s.-]', '', text)
    s = re.sub(r'\s+', '-', s.strip()).lower()
    return re.sub(r'^[^a-z]+', '', s) or 'section'


def anchors(doc):
    "The ids a converted page will have: its headings' (Quarto-style, see conf.py) and explicit HTML ids."
    ids, fence = set(), None
    for c in doc['cells']:
        if c['cell_type'] != 'markdown': continue
        for line in c['source'].splitlines():
            if m := re.match(r'\s*(`{3,}|~{3,})', line):
                if fence is None: fence = m.group(1)
                elif m.group(1).startswith(fence): fence = None
                continue
            if fence is None and (m := re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)):
                ids.add(pandoc_id(re.sub(r'<[^>]+>|[`*]', '', m.group(1))))
        ids.update(re.findall(r'\bid="([^"]+)"', c['source']))
    return ids


def drop_missing_anchors(doc, page, ids_of):
    "nbdev links private or undocumented names (`data.html#_where`) to anchors no page has: link to the page itself."
    n = 0
    def repl(m):
        nonlocal n
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), m.group(2)))[:-len('.html')]
        if target not in ids_of or m.group(3) in ids_of[target]: return m.group(0)
        n += 1
        return m.group(1) + m.group(2)
    pat = r'(\]\(|href=")((?:\.\./)*[\w./-]+\.html)#([^)"\s]+)'
    for c in doc['cells']:
        c['source'] = re.sub(pat, repl, c['source'])
        for o in c.get('outputs', []):
            for k in ('text/markdown', 'text/html'):
                if k in o.get('data', {}): o['data'][k] = re.sub(pat, repl, o['data'][k])
    return n


def md_cell(text): return {'cell_type': 'markdown', 'metadata': {}, 'source': text}


def convert(nb, proc_rel, page, links):
    fm, cells = front_matter(nb)
    fix = lambda s: links(s, page, proc_rel)
    head = f"# {fm.get('title') or Path(page).name}\n"
    if fm.get('description'): head += f"\n{{.nbdev-description}}\n{fix(str(fm['description']).strip())}\n"
    out = [md_cell(head)]
    for c in cells:
        src = _src(c)
        if c['cell_type'] == 'raw': continue
        if c['cell_type'] == 'markdown':
            if src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            out.append(md_cell(fix(quarto_link_attrs(src)))); continue
        opts, code = directives(src)
        if opts.get('include') == 'false': continue
        outputs = []
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if WIDGET in data: continue  # progress bars etc.: widget views with no saved state, nothing to show offline
            for k in ('text/markdown', 'text/html'):
                if k in data: data[k] = fix(''.join(data[k]) if isinstance(data[k], list) else data[k])
            outputs.append(o)
        if opts.get('output') == 'asis':  # Quarto puts such Markdown straight into the page (show_doc)
            if opts.get('echo') != 'false' and code.strip(): out.append(dict(c, source=code, outputs=[], metadata={}))
            for o in outputs:
                if 'text/markdown' in o.get('data', {}): out.append(md_cell(showdoc_md(o['data']['text/markdown'])))
            continue
        tags = [t for t, on in (('remove-input', opts.get('echo') == 'false'), ('remove-output', opts.get('output') == 'false')) if on]
        if tags and len(tags) == 2: continue
        meta = {'tags': tags} if tags else {}
        out.append({'cell_type': 'code', 'execution_count': c.get('execution_count'), 'id': c.get('id'),
                    'metadata': meta, 'outputs': outputs, 'source': code})
    for i, cell in enumerate(out): cell['id'] = f'c{i}'
    meta = {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
            'language_info': {'name': 'python', 'pygments_lexer': 'ipython3'}}
    return {'cells': out, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}


def section_of(page):
    parts = page.split('/')
    return parts[0] if len(parts) > 1 else ''


def toctrees(pages_in_order):
    "One hidden toctree per folder (the sidebar): modules first, then tutorials, benchmarks, other folders, other pages."
    groups = {}
    for proc_rel, page in pages_in_order:
        if page == 'index': continue
        sec = section_of(page)
        if sec == '' and not re.match(r'\d', Path(proc_rel).name): sec = '~'  # top-level pages that are not modules
        groups.setdefault(sec, []).append(page)
    key = lambda s: (SECTION_ORDER.get(s, 3 if s != '~' else 4), s)
    caption = lambda s: {'': 'Modules', '~': 'About'}.get(s, s.replace('_', ' ').title())
    return ''.join(f"\n```{{toctree}}\n:hidden:\n:caption: {caption(s)}\n\n" + '\n'.join(groups[s]) + '\n```\n'
                   for s in sorted(groups, key=key))


def write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text: path.write_text(text)


def convert_all(cfg):
    proc = cfg['proc']
    nbs = sorted(p for p in proc.rglob('*.ipynb') if not any(s.startswith(('_', '.')) for s in p.relative_to(proc).parts))
    if not nbs: sys.exit(f'no processed notebooks in {proc}: run nbdev_proc_nbs first')
    # only notebooks still present in nbs/ (the _proc cache keeps deleted ones)
    nbs = [p for p in nbs if (cfg['nbs'] / p.relative_to(proc)).exists()]
    loaded = {p.relative_to(proc).as_posix(): json.loads(p.read_text()) for p in nbs}
    pages = {rel: page_of(rel, front_matter(nb)[0]) for rel, nb in loaded.items()}
    dup = {pg for pg in pages.values() if list(pages.values()).count(pg) > 1}
    if dup: sys.exit(f'two notebooks would make the same page: {sorted(dup)}')
    links = Links(cfg['site_url'], pages)
    docs = {pages[rel]: convert(nb, rel, pages[rel], links) for rel, nb in loaded.items()}
    ids_of = {page: anchors(doc) for page, doc in docs.items()}
    dropped = sum(drop_missing_anchors(doc, page, ids_of) for page, doc in docs.items())
    if dropped: print(f'docs: {dropped} links to names without a docs entry (private or undocumented) point at their page')
    written = set()
    for page, doc in docs.items():
        if page == 'index': doc['cells'].append(dict(md_cell(toctrees(sorted(pages.items()))), id='toctree'))
        dest = SRC / f'{page}.ipynb'
        write_if_changed(dest, json.dumps(doc, indent=1, ensure_ascii=False))
        written.add(dest)
    if 'index' not in pages.values(): sys.exit('nbs/index.ipynb is missing: the site needs a landing page')
    for p in SRC.rglob('*.ipynb'):  # pages of notebooks that no longer exist
        if p not in written: p.unlink()
    return pages


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--no-proc', action='store_true', help='reuse _proc/ as it is (skip nbdev_proc_nbs)')
    ap.add_argument('--strict', action='store_true', help='Sphinx warnings are errors')
    a = ap.parse_args()
    cfg, t0 = settings(), time.time()
    if not a.no_proc: run_proc_nbs()
    t1 = time.time()
    pages = convert_all(cfg)
    out, html = cfg['docs'], BUILD / 'html'  # MyST-NB writes images beside Sphinx's output folder: keep both in _docs_build/
    shutil.rmtree(html, ignore_errors=True)  # no stale pages; Sphinx re-reads only the notebooks that changed
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', 'auto', '-c', str(HERE), '-d', str(BUILD / 'doctrees'),
           str(SRC), str(html)] + (['-W', '--keep-going'] if a.strict else [])
    subprocess.run(cmd, cwd=ROOT, check=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(html, out)
    t2 = time.time()
    print(f'docs: {len(pages)} pages in {out} (nbdev_proc_nbs {t1 - t0:.0f} s, Sphinx {t2 - t1:.0f} s); '
          f'open {out / "index.html"} or run `make docs-serve`')


if __name__ == '__main__': main()
