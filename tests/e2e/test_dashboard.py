"""The key service's dashboard in a real headless browser (Debian's chromium and chromium-driver,
driven by selenium), with the keys it makes used against the API through keygate in a real Envoy:
generate → copy → call → 200; regenerate with a grace → the old key works until its instant, then
401; revoke → 401 within the poll period; a PAT through Basic; another account's keys never
visible; and the attacks: XSS through a key's name, CSRF from another origin, session fixation.
Then every place a secret could leak is swept for the keys and passwords used."""
from __future__ import annotations

import base64
import http.server
import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from harness import CREATED_DIRS, Envoy, KeyService, free_port, wait_until

POLL_MS = 300
GRACE_S = 4  # the service's --default-grace-s here: a grace short enough to watch end
PASSWORDS = ["alice-password", "bob-password"]


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for p in (browser, driver):
        if not Path(p).exists():
            raise RuntimeError(f"{p} is missing: apt-get install chromium chromium-driver (tests/run.sh does)")
    return browser, driver


def new_browser() -> webdriver.Chrome:
    browser, driver = chromium_paths()
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    CREATED_DIRS.append(Path(profile))
    o = webdriver.ChromeOptions()
    o.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--user-data-dir={profile}", "--window-size=1280,1000"):
        o.add_argument(a)
    d = webdriver.Chrome(service=ChromeService(executable_path=driver), options=o)
    d.set_page_load_timeout(20)
    return d


@pytest.fixture(scope="module")
def ks():
    k = KeyService(faults=False, extra_args=["--default-grace-s", str(GRACE_S), "--product-name", "Event Staff API",
                                             "--key-label", "business API key"]).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def envoy(upstream, ks):
    cfg = {"key_service": {"cluster": "keyservice", "timeout_ms": 2000, "positive_ttl_s": 60,
                           "revocation_poll_ms": POLL_MS,
                           "key_format": {"prefixes": ["kgb_", "kgp_", "kgn_"]}},
           "auth_throttle": False,
           "rate_limit": {"plans": {"free": {"requests": 100000, "window_s": 60},
                                    "professional": {"requests": 100000, "window_s": 60}}}}
    e = Envoy(cfg, upstream.port, extra_clusters=[ks.cluster()]).start().wait_feed_polled()
    yield e
    e.stop()


@pytest.fixture
def browser():
    d = new_browser()
    yield d
    d.quit()


def base(ks) -> str:
    return f"http://127.0.0.1:{ks.port}"


def log_in(d, ks, email="alice@example.com", password="alice-password") -> None:
    d.get(base(ks) + "/dashboard")
    assert d.current_url.endswith("/dashboard/login")
    d.find_element(By.ID, "email").send_keys(email)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login").click()
    wait_until(lambda: d.current_url.endswith("/dashboard") and d.find_elements(By.ID, "business"), 10,
               message="the keys page")


def generate(d, name: str, kind: str = "key", lifetime: str | None = None) -> str:
    if kind == "key":
        d.find_element(By.ID, "key-name").send_keys(name)
        d.find_element(By.ID, "generate").click()
    else:
        d.find_element(By.ID, "pat-name").send_keys(name)
        if lifetime:
            f = d.find_element(By.ID, "pat-lifetime")
            f.clear()
            f.send_keys(lifetime)
        d.find_element(By.ID, "generate-pat").click()
    secret = wait_until(lambda: d.find_elements(By.ID, "secret"), 10, message="the new key's page")[0].text
    return secret


def bearer(e: Envoy, key: str):
    return e.req("GET", "/v1/objects/events", [("Authorization", f"Bearer {key}")])


def basic(e: Envoy, user: str, key: str):
    b = base64.b64encode(f"{user}:{key}".encode()).decode()
    return e.req("GET", "/api/records/contacts", [("Authorization", f"Basic {b}")])


def row_of(d, key_id_or_name: str):
    for tr in d.find_elements(By.CSS_SELECTOR, "table tbody tr"):
        if tr.get_attribute("data-id") == key_id_or_name or tr.find_element(By.CLASS_NAME, "name").text == key_id_or_name:
            return tr
    return None


SEEN_SECRETS: list[str] = []


def test_generate_copy_call_regenerate_revoke(browser, ks, envoy):
    d = browser
    log_in(d, ks)
    assert "Event Staff API" in d.title and "Business API keys of acme" in d.page_source
    d.execute_cdp_cmd("Browser.grantPermissions", {"origin": base(ks),
                                                   "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    secret = generate(d, "ci pipeline")
    SEEN_SECRETS.append(secret)
    assert secret.startswith("kgb_") and len(secret) == 42
    assert "shown this once" in d.page_source
    d.find_element(By.ID, "copy").click()
    wait_until(lambda: d.find_element(By.ID, "copy").text == "Copied", 5, message="the copy button")
    copied = d.execute_async_script("navigator.clipboard.readText().then(arguments[0], e => arguments[0]('ERR ' + e))")
    assert copied == secret
    assert bearer(envoy, copied).status == 200  # the copied key works through Envoy

    # the list: name, the secret's first characters only, state
    d.find_element(By.ID, "back").click()
    row = wait_until(lambda: row_of(d, "ci pipeline"), 5, message="the new key in the list")
    assert secret[:8] in row.text and secret not in d.page_source and row.find_element(By.CLASS_NAME, "state").text == "active"

    # regenerate with the grace (GRACE_S, the default choice): old key until the instant, then 401
    Select(row.find_element(By.NAME, "grace_s")).select_by_value(str(GRACE_S))
    clicked = time.time()
    row.find_element(By.CLASS_NAME, "rotate").click()
    new = wait_until(lambda: d.find_elements(By.ID, "secret"), 10, message="the regenerated key")[0].text
    # the service's instant is its clock's whole second + the grace: between these two
    earliest, instant = int(clicked) + GRACE_S, time.time() + GRACE_S
    SEEN_SECRETS.append(new)
    assert new != secret and d.find_element(By.ID, "grace").text.startswith("The key it replaces keeps working until")
    assert bearer(envoy, new).status == 200
    while time.time() < earliest - 0.3:
        assert bearer(envoy, secret).status == 200
        time.sleep(0.2)
    wait_until(lambda: bearer(envoy, secret).status == 401, (instant - time.time()) + 1 + POLL_MS / 1000 + 1.5,
               0.05, "the old key to be refused after its grace")
    assert time.time() <= instant + 1 + POLL_MS / 1000 + 1.5

    # revoke the new key: 401 within the poll period
    d.find_element(By.ID, "back").click()
    rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#business tbody tr")
            if r.find_element(By.CLASS_NAME, "name").text == "ci pipeline"
            and r.find_element(By.CLASS_NAME, "state").text == "active"]
    assert len(rows) == 1 and new[:8] in rows[0].text
    rows[0].find_element(By.CLASS_NAME, "revoke").click()
    wait_until(lambda: d.current_url.endswith("/dashboard"), 5)
    t = time.time()
    wait_until(lambda: bearer(envoy, new).status == 401, POLL_MS / 1000 + 1.5, 0.05, "the revoked key to be refused")
    assert time.time() - t <= POLL_MS / 1000 + 1.5
    states = [r.find_element(By.CLASS_NAME, "state").text for r in d.find_elements(By.CSS_SELECTOR, "#business tbody tr")
              if r.find_element(By.CLASS_NAME, "name").text == "ci pipeline"]
    assert sorted(states) == ["replaced", "revoked"]


def test_a_personal_access_token_through_basic(browser, ks, envoy):
    d = browser
    log_in(d, ks)
    pat = generate(d, "laptop", kind="pat", lifetime="1")
    SEEN_SECRETS.append(pat)
    assert pat.startswith("kgn_") and "curl -u alice:TOKEN" in d.page_source
    assert basic(envoy, "alice", pat).status == 200
    assert basic(envoy, "bob", pat).status == 401
    d.find_element(By.ID, "back").click()
    row = row_of(d, "laptop")
    assert row is not None and row.find_element(By.CLASS_NAME, "state").text == "active"
    expires = row.find_elements(By.TAG_NAME, "td")[3].text
    assert expires.endswith("UTC") and expires != "never"


def test_another_accounts_keys_are_never_visible(browser, ks, envoy):
    d = browser
    log_in(d, ks)
    alice_key = generate(d, "alice-only")
    SEEN_SECRETS.append(alice_key)
    d.find_element(By.ID, "back").click()
    alice_id = row_of(d, "alice-only").get_attribute("data-id")
    d.find_element(By.ID, "logout").click()
    wait_until(lambda: d.current_url.endswith("/dashboard/login"), 5)

    log_in(d, ks, "bob@example.com", "bob-password")
    page = d.page_source
    assert "alice-only" not in page and alice_id not in page and "acme" not in page and "globex" in page
    # bob's session and CSRF token, aimed at alice's key: not found, and it keeps working
    csrf = d.find_element(By.CSS_SELECTOR, "#new-key input[name=csrf]").get_attribute("value")
    sid = next(c["value"] for c in d.get_cookies() if c["name"] == "ks_session")
    for action in ("revoke", "rotate"):
        req = urllib.request.Request(f"{base(ks)}/dashboard/keys/{alice_id}/{action}",
                                     data=f"csrf={csrf}&grace_s=0".encode(),
                                     headers={"cookie": f"ks_session={sid}", "origin": base(ks),
                                              "content-type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 404
    assert bearer(envoy, alice_key).status == 200


def test_a_key_name_cannot_inject_script(browser, ks, envoy):
    d = browser
    log_in(d, ks)
    names = ['<img src=x onerror="window.pwned=1">', '"><script>window.pwned=2</script>', "</td></tr><b id=inj>x</b>"]
    for n in names:
        SEEN_SECRETS.append(generate(d, n))
        assert d.find_element(By.CSS_SELECTOR, "h1").text.endswith(n)  # shown as text
        d.find_element(By.ID, "back").click()
    cells = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#business td.name")]
    for n in names:
        assert n in cells
    assert d.execute_script("return window.pwned === undefined")
    assert not d.find_elements(By.CSS_SELECTOR, "td.name img, td.name script, #inj")
    csp = urllib.request.urlopen(base(ks) + "/dashboard/login", timeout=5).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


class Evil(http.server.BaseHTTPRequestHandler):
    """A page on another origin that posts a form to the dashboard on load."""
    target = ""
    timeout = 5

    def do_GET(self):
        body = (f'<html><body><form id=f method=post action="{self.target}">'
                '<input name=csrf value=guess><input name=grace_s value=0></form>'
                '<script>document.getElementById("f").submit()</script></body></html>').encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_csrf_from_another_origin_and_forms_without_the_token_are_refused(browser, ks, envoy):
    d = browser
    log_in(d, ks)
    key = generate(d, "csrf-target")
    SEEN_SECRETS.append(key)
    d.find_element(By.ID, "back").click()
    key_id = row_of(d, "csrf-target").get_attribute("data-id")
    # a cross-site form post while alice is logged in
    Evil.target = f"{base(ks)}/dashboard/keys/{key_id}/revoke"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    srv.daemon_threads = True  # a browser's idle preconnect must not hold shutdown()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        d.get(f"http://localhost:{srv.server_port}/")  # another origin (another host and port)
        wait_until(lambda: "/dashboard" in d.current_url, 10, message="the forged post to land")
        assert "Revoke" not in d.page_source  # refused (403), not the keys page
    finally:
        srv.shutdown()
    time.sleep(POLL_MS / 1000 + 0.5)
    assert bearer(envoy, key).status == 200
    # the same session cookie, but no token / a wrong token / a foreign Origin: 403
    sid = next(c["value"] for c in d.get_cookies() if c["name"] == "ks_session")
    d.get(base(ks) + "/dashboard")
    csrf = d.find_element(By.CSS_SELECTOR, "#new-key input[name=csrf]").get_attribute("value")
    for form, origin in ((b"grace_s=0", None), (b"csrf=wrong&grace_s=0", None),
                         (f"csrf={csrf}&grace_s=0".encode(), "http://evil.example")):
        headers = {"cookie": f"ks_session={sid}", "content-type": "application/x-www-form-urlencoded"}
        if origin:
            headers["origin"] = origin
        req = urllib.request.Request(f"{base(ks)}/dashboard/keys/{key_id}/revoke", data=form, headers=headers)
        try:
            urllib.request.urlopen(req, timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status in (403, 422), (form, origin, status)
    assert bearer(envoy, key).status == 200
    # the cookie's attributes
    c = next(c for c in d.get_cookies() if c["name"] == "ks_session")
    assert c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/dashboard"


def session_of(ks, email: str, password: str) -> str:
    """A session id from a login without a browser (the login form's own double-submit token)."""
    import http.cookiejar
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base(ks)}/dashboard/login", timeout=5).read().decode()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = urllib.parse.urlencode({"csrf": csrf, "email": email, "password": password}).encode()
    opener.open(urllib.request.Request(f"{base(ks)}/dashboard/login", data=form,
                                       headers={"origin": base(ks)}), timeout=5).read()
    return next(c.value for c in jar if c.name == "ks_session")


def test_a_session_id_planted_before_login_is_worthless(browser, ks):
    d = browser
    d.get(base(ks) + "/dashboard/login")
    planted = "a" * 64
    d.add_cookie({"name": "ks_session", "value": planted, "path": "/dashboard"})
    log_in(d, ks)
    now = next(c["value"] for c in d.get_cookies() if c["name"] == "ks_session")
    assert now != planted
    req = urllib.request.Request(f"{base(ks)}/dashboard", headers={"cookie": f"ks_session={planted}"})
    with urllib.request.urlopen(req, timeout=5) as r:  # redirected to the login page
        assert r.url.endswith("/dashboard/login")
    # a second session cookie planted beside the real one (another path, as a sibling domain
    # could): an ambiguous session is no session, never the planted one
    bob = session_of(ks, "bob@example.com", "bob-password")  # the attacker's own valid session
    for both in (f"ks_session={now}; ks_session={bob}", f"ks_session={bob}; ks_session={now}"):
        req = urllib.request.Request(f"{base(ks)}/dashboard", headers={"cookie": both})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.url.endswith("/dashboard/login"), both
            assert b"globex" not in r.read()
    # logging out ends the session on the server, not only in the browser
    d.find_element(By.ID, "logout").click()
    wait_until(lambda: d.current_url.endswith("/dashboard/login"), 5)
    req = urllib.request.Request(f"{base(ks)}/dashboard", headers={"cookie": f"ks_session={now}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.url.endswith("/dashboard/login")


def test_no_secret_or_password_anywhere(browser, ks, envoy):
    """After the flows above: the keys and passwords are in none of the service's log, its
    database files, Envoy's logs, or the browser's cookies and storage."""
    assert len(SEEN_SECRETS) >= 5, "run with the flows above"
    d = browser
    log_in(d, ks)
    needles = SEEN_SECRETS + PASSWORDS
    where = {"service log": ks.log().encode()}
    db = Path(ks.db)
    where["database"] = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert b"key_hash" in where["database"] or len(where["database"]) > 4096
    where["envoy log"] = envoy.logs().encode()
    where["access log"] = envoy.access_log().encode()
    where["cookies"] = json.dumps(d.get_cookies()).encode()
    where["storage"] = json.dumps(d.execute_script(
        "return [Object.entries(localStorage), Object.entries(sessionStorage)]")).encode()
    where["keys page"] = d.page_source.encode()
    for name, blob in where.items():
        for s in needles:
            assert s.encode() not in blob, f"{s[:8]}… found in the {name}"
