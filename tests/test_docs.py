"""The docs site in a real browser: Debian's headless Chromium, driven by Playwright, opens every page of `_docs/`
served on 127.0.0.1. The site is built first (`make docs`) when it is absent or older than the notebooks.
Chromium comes from `make docs-deps` (apt-get install chromium); Playwright downloads no browser here."""
import functools, http.server, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS, NBS = ROOT / '_docs', ROOT / 'nbs'
SHOTS = ROOT / '_docs_screenshots'
CHROMIUM = os.environ.get('CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
PAGE_TIMEOUT_MS = 30_000
DEADLINE_S = 600  # the whole browser session; every wait below is bounded by it or by PAGE_TIMEOUT_MS


def notebooks():
    "Every notebook nbdev renders (scratch notebooks `_*` and checkpoints skipped)."
    return sorted(p for p in NBS.rglob('*.ipynb')
                  if not any(s.startswith(('_', '.')) for s in p.relative_to(NBS).parts))


def expected_pages():
    "The page of each notebook present now, named as nbdev/Quarto name it (`03_losses.ipynb` -> `losses.html`)."
    from nbdev.doclinks import _nbpath2html
    return {_nbpath2html(p.relative_to(NBS)).as_posix(): p.relative_to(NBS).as_posix() for p in notebooks()}


def _stale_reason():
    index = DOCS / 'index.html'
    if not index.exists(): return f'{index.relative_to(ROOT)} is absent'
    built = index.stat().st_mtime
    sources = notebooks() + [p for p in (NBS / '_sphinx').rglob('*') if p.is_file()]
    newer = [p for p in sources if p.stat().st_mtime > built]
    if newer: return f'{newer[0].relative_to(ROOT)} is newer than the site'


@pytest.fixture(scope='module')
def site():
    "The built site: built here with `make docs` (nbs/_sphinx/build_docs.py) when absent or stale."
    reason = _stale_reason()
    if reason:
        print(f'\ntest_docs: {reason}: building the site (make docs)', flush=True)
        env = dict(os.environ, PATH=f"{ROOT / '.ci' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        r = subprocess.run([sys.executable, str(NBS / '_sphinx' / 'build_docs.py')], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
        if r.returncode or not (DOCS / 'index.html').exists():
            pytest.fail(f'the docs site could not be built (run `make docs` to see why):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    return DOCS


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def server(site):
    "A static file server on 127.0.0.1 (a free port), stopped after the module."
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site)))
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{srv.server_port}/'
    srv.shutdown(); srv.server_close(); t.join(10)


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f'Chromium not found at {CHROMIUM}: run `make docs-deps` (apt-get install chromium), '
                    'or point CHROMIUM at a Chromium binary')
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.fail('playwright is not installed: pip install -e ".[dev]"')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=PAGE_TIMEOUT_MS)
        try: yield b
        finally: b.close()


def _local_path(url, base):
    "The file a same-site URL serves, relative to the site root ('' for other sites)."
    if not url.startswith(base): return ''
    path = unquote(urlparse(url).path)[len(urlparse(base).path):]
    return path + 'index.html' if path == '' or path.endswith('/') else path


JS_FACTS = """() => ({
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  images: [...document.querySelectorAll('img')].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                                          w: i.naturalWidth})),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  sidebar: [...document.querySelectorAll('.sidebar-tree a.reference')].map(a => a.href),
  leftovers: [...[...document.querySelectorAll('div.cell_input pre')].map(p => p.innerText)
                  .filter(t => /^\\s*#\\|/m.test(t)).map(t => t.trim().slice(0, 60)),
              ...((document.querySelector('article') || document.body).innerText.match(/\\{target=[^}]*\\}/g) || [])],
})"""


@pytest.fixture(scope='module')
def crawl(site, server, browser):
    "Every HTML page of the site opened once: console errors, failed requests, links, images, ids and sidebar."
    start, pages = time.monotonic(), {}
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')
                   if not p.relative_to(site).parts[0].startswith('_'))
    ctx = browser.new_context(viewport={'width': 1400, 'height': 1000})
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    page = ctx.new_page()
    problems = []
    page.on('console', lambda m: problems.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
    page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
    page.on('requestfailed', lambda r: problems.append(f'request failed: {r.url} ({r.failure})'))
    page.on('response', lambda r: problems.append(f'HTTP {r.status}: {r.url}') if r.status >= 400 else None)
    for f in files:
        assert time.monotonic() - start < DEADLINE_S, f'crawling the site took over {DEADLINE_S} s'
        problems.clear()
        page.goto(server + f, wait_until='load')
        page.wait_for_load_state('networkidle', timeout=PAGE_TIMEOUT_MS)
        pages[f] = dict(page.evaluate(JS_FACTS), problems=list(problems))
    ctx.close()
    print(f'\ntest_docs: crawled {len(pages)} pages in {time.monotonic() - start:.1f} s', flush=True)
    return pages


def test_site_has_a_page_per_notebook(site):
    missing = sorted(set(expected_pages()) - {p.relative_to(site).as_posix() for p in site.rglob('*.html')})
    assert not missing, f'notebooks without a page (run `make docs`): {missing}'


def test_every_page_loads_without_console_errors(crawl):
    bad = {f: p['problems'] for f, p in crawl.items() if p['problems']}
    assert not bad, '\n'.join(f'{f}: {pr}' for f, pr in bad.items())


def test_no_quarto_cell_options_left(crawl):
    "nbdev leaves `#| echo: false`-style options and Pandoc link attributes for Quarto: none may show on a page."
    bad = {f: p['leftovers'] for f, p in crawl.items() if p['leftovers']}
    assert not bad, '\n'.join(f'{f}: {x}' for f, x in bad.items())


def test_sidebar_reaches_every_notebook(crawl, server):
    for f in ('index.html', 'losses.html', 'tutorials/textile_inspection.html'):
        linked = {_local_path(u, server) for u in crawl[f]['sidebar']}
        missing = {pg: nb for pg, nb in expected_pages().items() if pg != 'index.html' and pg not in linked}
        assert not missing, f'the sidebar of {f} lacks the pages of {sorted(missing.values())}'
        assert linked <= set(crawl), f'sidebar links to pages that do not exist: {sorted(linked - set(crawl))}'


def test_internal_links_and_images_resolve(crawl, server, site):
    broken, n_links, n_images = [], 0, 0
    for f, p in crawl.items():
        for url in p['links']:
            path = _local_path(url, server)
            if not path: continue  # another site (GitHub, the published docs)
            n_links += 1
            target, frag = urldefrag(url)
            if not (site / path).is_file(): broken.append(f'{f}: link to missing {path}'); continue
            if frag and path in crawl and unquote(frag) not in crawl[path]['ids']:
                broken.append(f'{f}: link to {path}#{frag}: no such anchor')
        for img in p['images']:
            n_images += 1
            if not img['ok']: broken.append(f'{f}: image not shown: {img["src"]}')
    print(f'\ntest_docs: {n_links} internal links and {n_images} images checked, {len(broken)} broken', flush=True)
    assert n_links and n_images
    assert not broken, f'{len(broken)} broken:\n' + '\n'.join(broken[:50])


def test_readme_links_resolve_in_the_site(site):
    "The README's links into the docs site (its published address) land on built pages and anchors."
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    base = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/'
    links = re.findall(re.escape(base) + r'([^\s)"\'>]*)', (ROOT / 'README.md').read_text())
    assert links, f'README.md has no link into {base}'
    bad = []
    for link in links:
        path, _, frag = link.partition('#')
        f = site / (path or 'index.html')
        if not f.is_file(): bad.append(f'{base}{link}: no page {path}'); continue
        if frag and f'id="{frag}"' not in f.read_text(): bad.append(f'{base}{link}: no anchor #{frag}')
    assert not bad, '\n'.join(bad)


def _open(browser, url):
    ctx = browser.new_context(viewport={'width': 1400, 'height': 1000})
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(url, wait_until='load'); page.wait_for_load_state('networkidle')
    return ctx, page


def test_losses_page_shows_show_doc_and_a_saved_plot(browser, server):
    ctx, page = _open(browser, server + 'losses.html')
    try:
        sigs = page.evaluate("""() => [...document.querySelectorAll('article section > h3')].map(h => {
            const n = h.nextElementSibling; return n && n.matches('div.highlight-python') ? [h.textContent, n.innerText] : null
          }).filter(x => x)""")
        sigs = [(h.rstrip('#¶ \n'), code) for h, code in sigs if re.match(r'(async def|def|class) \w+\(', code.strip())]
        assert len(sigs) >= 5, f'expected rendered show_doc signatures under API headings, got {sigs[:3]}'
        assert any(h.strip() == 'SigLIPLoss' for h, _ in sigs), [h for h, _ in sigs]
        body = page.inner_text('article')
        for raw in ('```', '{target=', 'output: asis', '#| '):
            assert raw not in body, f'unrendered {raw!r} on the losses page'
        plots = page.evaluate("""() => [...document.querySelectorAll('article .cell_output img')]
                                 .filter(i => i.complete && i.naturalWidth >= 200).map(i => i.src)""")
        assert plots, 'no saved plot shown on the losses page'
        assert page.locator('mjx-container').count() > 0, 'no math rendered (MathJax)'
    finally: ctx.close()


def test_search_finds_siglip(browser, server):
    ctx, page = _open(browser, server + 'search.html?q=SigLIP')
    try:
        page.wait_for_selector('#search-results ul.search li', timeout=PAGE_TIMEOUT_MS)
        hits = page.eval_on_selector_all('#search-results ul.search li a', 'as => as.map(a => a.href)')
        assert any(_local_path(h, server).startswith('losses.html') for h in hits), hits
    finally: ctx.close()


def test_screenshots(browser, server):
    "Three pages as a reader sees them, saved as test artefacts in _docs_screenshots/."
    SHOTS.mkdir(exist_ok=True)
    for name, path, first_plot in (('index', 'index.html', False), ('losses', 'losses.html', True),
                                   ('textile_inspection', 'tutorials/textile_inspection.html', True)):
        ctx, page = _open(browser, server + path)
        try:
            if first_plot:
                page.locator('article .cell_output img').first.evaluate(  # one scroll down: Furo's 'back to top' stays hidden
                    'el => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 250)')
            out = SHOTS / f'{name}.png'
            page.screenshot(path=str(out))
            assert out.stat().st_size > 10_000
        finally: ctx.close()
    print(f'\ntest_docs: screenshots in {SHOTS}', flush=True)
