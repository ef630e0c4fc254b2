"""Issue #14: the key-service contract as a document, a JSON Schema and a conformance check an
operator can point at their own service (`keygate-check --key-service URL`), run here against the
key service as operators run it (envoy/keyservice) and against broken ones (the test-only fault
proxy in front of it, tests/services/faultproxy.py)."""
import json
import subprocess
import urllib.request

import jsonschema
import pytest

from harness import ROOT, KeyService

SCHEMA = json.loads((ROOT / "envoy" / "contract" / "key-service-contract.schema.json").read_text())
PAT, BUSINESS = "kgn_demo_alice_pat_0001", "kgb_demo_acme_business_0001"


def check_bin():
    subprocess.run(["cargo", "build", "--quiet", "--bin", "keygate-check"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "keygate-check"


@pytest.fixture(scope="module")
def reference():
    """The product: envoy/keyservice, no fault injection in it."""
    k = KeyService(seed_demo=True, faults=False).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def ks():
    """The product with the test-only fault modes."""
    k = KeyService(seed_demo=True).start()
    yield k
    k.stop()


def run_check(ks, *args):
    p = subprocess.run([str(check_bin()), "--key-service", f"http://127.0.0.1:{ks.port}", *args],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout


def test_the_reference_service_conforms(reference):
    code, out = run_check(reference, "--valid-key", PAT, "--user", "alice")
    assert code == 0, out
    assert out.count("\nok ") + out.startswith("ok ") == 7, out
    code, out = run_check(reference, "--valid-key", BUSINESS)
    assert code == 0 and "conforms to contract v1 (6 checks)" in out, out


def test_the_test_service_conforms_when_no_fault_is_set(ks):
    """The fault-injecting extension behaves as the product until a fault mode is set."""
    ks.mode(verify="ok")
    code, out = run_check(ks, "--valid-key", PAT, "--user", "alice")
    assert code == 0, out


@pytest.mark.parametrize("mode,failing", [
    ("anyuser", "verify: the valid key with another Basic user"),
    ("garbage", "verify: unknown key"),
    ("status:500", "verify: the valid key"),
])
def test_a_broken_service_fails_the_check_that_names_its_defect(ks, mode, failing):
    ks.mode(verify=mode)
    try:
        code, out = run_check(ks, "--valid-key", PAT, "--user", "alice")
    finally:
        ks.mode(verify="ok")
    assert code == 1, out
    assert f"FAIL {failing}:" in out, out


def post(ks, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{ks.port}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_the_schema_accepts_the_reference_answers_and_refuses_broken_ones(reference):
    ks = reference
    validator = jsonschema.Draft202012Validator(SCHEMA)
    valid = post(ks, "/v1/keys/verify", {"key": PAT, "user": "alice"})
    refused = post(ks, "/v1/keys/verify", {"key": "nope", "user": None})
    with urllib.request.urlopen(f"http://127.0.0.1:{ks.port}/v1/keys/revocations?since=-1", timeout=10) as r:
        feed = json.loads(r.read())
    for answer in (valid, refused, feed):
        validator.validate(answer)
    assert valid["valid"] is True and refused["valid"] is False
    for broken in (dict(valid, scopes=["read write"]), {k: v for k, v in valid.items() if k != "key_id"},
                   dict(valid, contract=2), dict(valid, key_id="x\n"), {"cursor": "7"}):
        assert not validator.is_valid(broken), broken
