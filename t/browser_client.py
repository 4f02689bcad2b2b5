#!/usr/bin/python3
"""t/browser_client.py - drive the browser client of mod_kmdc's page (the
card, sealing and receiving in the page) in Debian's headless Chromium, for
t/071_browser_client.t.

  browser_client.py [options] vectors PAGE_URL VECTOR_DIR CARD_DIR
      check the page's JavaScript (window.KMDC) against RFC 7914's scrypt
      and PBKDF2 vectors, docs/vectors/*.json and the card files of
      fuzz/corpus/card; prints {"results": [[name, ok, detail], ...]}
  browser_client.py [options] run PAGE_URL STEPS_JSON
      run the steps (a JSON list, below) in one browser session and print
      {"steps": [...one result per step...], "csp_errors": [...],
       "requests": [[method, url, post data or null], ...]}

Steps: {"do": "import", "file": F, "pass": P}, {"do": "activate", "code": C},
{"do": "send", "files": [F...], "to": "a b"}, {"do": "send_reload", "file": F,
"to": A, "at": FRACTION}, {"do": "receive"}, {"do": "confirm"},
{"do": "downloads", "names": [N...]}, {"do": "export", "pass": P},
{"do": "status", "message": ID or "" (the oldest)}, {"do": "watch", "count": N, "then": ARGV},
{"do": "state"}, {"do": "reload"}, {"do": "cmd", "argv": ARGV} (runs a
command, e.g. kmdc, between two steps), {"do": "vectors", "vectors": DIR,
"cards": DIR} (as the vectors mode).  Each waits for the page's answer.

Options:
  --profile DIR      the Chromium profile (kept: IndexedDB lives there)
  --downloads DIR    where downloads go
  --driver-log FILE  chromedriver's log

Exits 0 when the browser could be driven (whatever the page answered), 2 on
a usage error, 1 otherwise.  KMDC_CHROMIUM and KMDC_CHROMEDRIVER override
the binaries.
"""
import glob
import json
import os
import sys
import time

WAIT = 300

SCRYPT_RFC7914 = [
    # RFC 7914 section 12 (the two vectors with a small N)
    {"P": "", "S": "", "N": 16, "r": 1, "p": 1,
     "dk": "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
           "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906"},
    {"P": "password", "S": "NaCl", "N": 1024, "r": 8, "p": 16,
     "dk": "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
           "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"},
]
PBKDF2_RFC7914 = {  # RFC 7914 section 11, c = 1
    "P": "passwd", "S": "salt",
    "dk": "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
          "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"}

# The vector checks, run in the page: arguments[0] is the data, the last
# argument selenium's callback.
VECTOR_JS = r"""
var D = arguments[0], done = arguments[arguments.length - 1], K = window.KMDC, out = [];
function ok(name, cond, detail) { out.push([name, !!cond, detail === undefined ? '' : String(detail)]); }
function doc(n) { var b = new Uint8Array(n); for (var i = 0; i < n; i++) b[i] = i % 251; return b; }
(async function () {
  var i, v, e;
  for (i = 0; i < D.scrypt.length; i++) {
    v = D.scrypt[i];
    var dk = K.hex(await K.scrypt(K.utf8(v.P), K.utf8(v.S), v.N, v.r, v.p, v.dk.length / 2));
    ok('scrypt RFC 7914 P="' + v.P + '" N=' + v.N + ' r=' + v.r + ' p=' + v.p, dk === v.dk, dk);
  }
  v = D.pbkdf2;
  ok('PBKDF2-HMAC-SHA-256 RFC 7914 section 11, c=1',
     K.hex(await K.pbkdf2(K.utf8(v.P), K.utf8(v.S), 64)) === v.dk);
  D.chain.steps.forEach(function () {});
  for (i = 0; i < D.chain.steps.length; i++) {
    v = D.chain.steps[i];
    var st = await K.chainStep(K.unhex(v.chain_key));
    ok('chain step n=' + v.n, K.hex(st.mk) === v.message_key && K.hex(st.next) === v.next_chain_key);
  }
  ok('kdf: KBK', K.hex(await K.hkdf(K.unhex(D.kdf.keyblock_key.salt), K.unhex(D.kdf.keyblock_key.message_key),
     'KMDC/1 keyblock', 32)) === D.kdf.keyblock_key.kbk);
  ok('kdf: PK', K.hex(await K.hkdf(new Uint8Array(0), K.unhex(D.kdf.payload_key.dek), 'KMDC/1 payload', 32))
     === D.kdf.payload_key.pk);
  for (i = 0; i < D.activation.keys.length; i++) {
    v = D.activation.keys[i];
    ok('activation: ' + v.name, K.hex(await K.rotate(K.unhex(D.activation.r), K.unhex(v.key), v.name)) === v.rotated);
  }
  for (i = 0; i < D.request.requests.length; i++) {
    v = D.request.requests[i];
    var h = await K.authHeader(K.unhex(v.auth_key), BigInt(v.serial), v.method, v.target,
                               K.utf8(v.body), v.ts, v.nonce);
    ok('request: ' + v.name, h === v.authorization, h);
  }
  for (i = 0; i < D.envelopes.envelopes.length; i++) {
    e = D.envelopes.envelopes[i];
    var inp = e.input, o = e.output, m = inp.meta, mk = K.unhex(o.message_key);
    ok('envelope ' + e.name + ': message key', K.hex((await K.chainStep(K.unhex(inp.chain_key))).mk) === o.message_key);
    if (inp.direction === 1) {
      var blob = await K.seal(new Blob([doc(inp.document.length)]), {
        serial: BigInt(inp.serial), seq: BigInt(inp.seq), mk: mk, salt: K.unhex(inp.salt), dek: K.unhex(inp.dek),
        meta: { rcpt: m.rcpt, name: m.name === undefined ? undefined : K.utf8(m.name), type: m.type, sent: BigInt(m.sent) } });
      var env = new Uint8Array(await blob.arrayBuffer());
      ok('envelope ' + e.name + ': sealed byte for byte',
         env.length === o.envelope_len && K.hex(await K.sha256(env)) === o.envelope_sha256 &&
         K.hex(env.subarray(0, 40)) === o.header && K.hex(env.subarray(44, 44 + o.kb_len)) === o.keyblock &&
         (o.envelope === undefined || K.hex(env) === o.envelope), K.hex(env.subarray(0, 48)));
    } else {
      var full = o.envelope ? K.unhex(o.envelope) : K.cat([K.unhex(o.header), K.u64(0).subarray(4), K.unhex(o.keyblock)]);
      if (!o.envelope) { new DataView(full.buffer).setUint32(40, o.kb_len); }
      var hd = await K.openHead(new Blob([full]), BigInt(inp.serial));
      var kb = await K.openKeyblock(hd, mk);
      var mm = kb.meta;
      ok('envelope ' + e.name + ': keyblock opens, metadata as sealed',
         hd.seq === BigInt(inp.seq) && K.hex(kb.dek) === inp.dek && mm.size === BigInt(m.size) &&
         mm.sent === BigInt(m.sent) && mm.from === m.from && mm.fromserial === BigInt(m.fromserial) &&
         mm.msgid === BigInt(m.msgid) && mm.rcvd === BigInt(m.rcvd) &&
         (m.name === undefined ? mm.name === undefined : new TextDecoder().decode(mm.name) === m.name) &&
         mm.type === m.type);
      if (o.envelope) {
        var pl = new Uint8Array(await (await K.openPayload(new Blob([full]), hd, kb.dek, Number(m.size))).arrayBuffer());
        ok('envelope ' + e.name + ': payload opens to the document', K.hex(pl) === K.hex(doc(inp.document.length)));
        var bad = full.slice(); bad[bad.length - 1] ^= 1;
        try { await K.openPayload(new Blob([bad]), hd, kb.dek, Number(m.size)); ok('envelope ' + e.name + ': a flipped tag bit is refused', false); }
        catch (x) { ok('envelope ' + e.name + ': a flipped tag bit is refused', x.code === 'auth', x.code); }
        try { await K.openPayload(new Blob([full, new Uint8Array(1)]), hd, kb.dek, Number(m.size)); ok('envelope ' + e.name + ': a trailing byte is refused', false); }
        catch (x) { ok('envelope ' + e.name + ': a trailing byte is refused', x.code === 'protocol', x.code); }
        try { await K.openKeyblock(hd, new Uint8Array(32)); ok('envelope ' + e.name + ': a wrong key is refused', false); }
        catch (x) { ok('envelope ' + e.name + ': a wrong key is refused', x.code === 'auth', x.code); }
      }
    }
  }
  // cards
  var names = Object.keys(D.cards).sort();
  for (i = 0; i < names.length; i++) {
    var n = names[i], bytes = K.unhex(D.cards[n].hex), pass = D.cards[n].pass || '';
    try {
      var pc = await K.parseCard(bytes, pass), again;
      if (pc.protection === 1) {
        again = await K.serializeCard(pc.card, pass, { log2n: pc.log2n, r: pc.r, p: pc.p,
                                      salt: bytes.subarray(20, 36), iv: bytes.subarray(36, 48) });
      } else {
        again = await K.serializeCard(pc.card, '');
      }
      ok('card ' + n + ': reads and writes back byte for byte', K.hex(again) === D.cards[n].hex,
         'serial ' + K.hex16(pc.card.serial) + ' ' + pc.card.address);
      if (pc.protection === 1) {
        try { await K.parseCard(bytes, pass + 'x'); ok('card ' + n + ': a wrong passphrase is refused', false); }
        catch (x) { ok('card ' + n + ': a wrong passphrase is refused', x.code === 'passphrase', x.message); }
        try { await K.parseCard(bytes, ''); ok('card ' + n + ': without a passphrase one is asked for', false); }
        catch (x) { ok('card ' + n + ': without a passphrase one is asked for', x.code === 'passphrase' && /needed/.test(x.message), x.message); }
      }
      var flip = bytes.slice(); flip[50] ^= 4;
      try { await K.parseCard(flip, pass); ok('card ' + n + ': a flipped bit is damage', false); }
      catch (x) { ok('card ' + n + ': a flipped bit is damage', x.code === 'corrupt', x.code); }
    } catch (x) {
      ok('card ' + n + ': reads', D.cards[n].bad, x.code + ': ' + x.message);
    }
  }
  // a protected round trip with a small N, read back
  var c0 = (await K.parseCard(K.unhex(D.cards['plain-rich.card'].hex), '')).card;
  var prot = await K.serializeCard(c0, 'pass phrase', { log2n: 4, r: 2, p: 1 });
  var back = await K.parseCard(prot, 'pass phrase');
  ok('card: a protected card written here reads back', K.hex(await K.serializeCard(back.card, '')) ===
     D.cards['plain-rich.card'].hex && prot[9] === 1 && prot[16] === 4);
  // the NAME rules
  var R = window.KMDC_RULES;
  ok('rules: NAME examples', R.nameValid(K.utf8('report.pdf')) && R.nameValid(K.utf8('\u00e9t\u00e9.txt')) &&
     !R.nameValid(K.utf8('.')) && !R.nameValid(K.utf8('..')) && !R.nameValid(K.utf8('a/b')) &&
     !R.nameValid(K.utf8('a\\b')) && !R.nameValid(K.utf8('a\u202eb')) && !R.nameValid(K.utf8('a\u200bb')) &&
     !R.nameValid(K.utf8('a\ufeffb')) && !R.nameValid(K.utf8('a\u061cb')) && !R.nameValid(K.utf8('a\u2060b')) &&
     !R.nameValid(new Uint8Array([0x61, 0xc0, 0xaf])) && !R.nameValid(new Uint8Array([0xed, 0xa0, 0x80])) &&
     !R.nameValid(K.utf8('x'.repeat(256))) && R.nameValid(K.utf8('x'.repeat(255))) &&
     !R.nameValid(new Uint8Array([0x61, 0x7f])) && !R.nameValid(K.utf8('a\u0085')));
  ok('rules: a saved name never starts with . or -', R.saveName('.bashrc') === '_.bashrc' &&
     R.saveName('-rf') === '_-rf' && R.saveName('a.txt') === 'a.txt');
  done(out);
})().catch(function (x) { out.push(['vector run', false, x && x.stack ? x.stack : String(x)]); done(out); });
"""


def usage(msg):
    print("browser_client.py: " + msg, file=sys.stderr)
    sys.exit(2)


def start_browser(profile, downloads, driver_log):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = os.environ.get("KMDC_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--no-proxy-server",
                 "--window-size=1000,900", "--user-data-dir=" + profile):
        o.add_argument(flag)
    if downloads:
        o.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
            "profile.default_content_setting_values.automatic_downloads": 1})
    o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=os.environ.get("KMDC_CHROMEDRIVER", "/usr/bin/chromedriver"),
                      log_path=driver_log or os.devnull)
    d = webdriver.Chrome(service=service, options=o)
    d.set_script_timeout(WAIT)
    if downloads:
        d.execute_cdp_cmd("Browser.setDownloadBehavior",
                          {"behavior": "allow", "downloadPath": downloads})
    return d


def by_id(d, i):
    from selenium.webdriver.common.by import By
    return d.find_element(By.ID, i)


def wait_for(d, fn, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda drv: fn(drv))


def open_page(d, page):
    d.get(page)
    wait_for(d, lambda drv: drv.find_element("tag name", "body").get_attribute("data-client") == "ready")


def result(d, i):
    """Wait until the result box i is rendered; {kind, code, text}."""
    e = wait_for(d, lambda drv: by_id(drv, i) if by_id(drv, i).get_attribute("data-state") == "done" else False)
    return {"kind": e.get_attribute("data-kind"), "code": e.get_attribute("data-code"),
            "text": e.text}


def reset(d, i):
    d.execute_script("var e = document.getElementById(arguments[0]); e.removeAttribute('data-state');"
                     "e.hidden = true;", i)


def click(d, i):
    by_id(d, i).click()


def submit(d, form):
    from selenium.webdriver.common.by import By
    by_id(d, form).find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def accept_alert(d):
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(d, 10).until(EC.alert_is_present())
    d.switch_to.alert.accept()


def state(d):
    from selenium.webdriver.common.by import By
    info = {}
    dts = d.find_elements(By.CSS_SELECTOR, "#card-info dt")
    dds = d.find_elements(By.CSS_SELECTOR, "#card-info dd")
    for k, v in zip(dts, dds):
        info[k.text] = v.text
    return {
        "card": info,
        "gone": by_id(d, "card-gone").text,
        "outbox": [[li.get_attribute("data-key"), li.get_attribute("data-state")]
                   for li in d.find_elements(By.CSS_SELECTOR, "#outbox-list li")],
        "sent": [tr.get_attribute("data-message") for tr in d.find_elements(By.CSS_SELECTOR, "#sent-table tr")],
        "mailbox": by_id(d, "mailbox-count").get_attribute("data-count"),
        "send_visible": by_id(d, "send-section").is_displayed(),
        "storage": d.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie];"),
    }


def downloads_done(ddir, names):
    for n in names:
        p = os.path.join(ddir, n)
        if not os.path.exists(p) or os.path.exists(p + ".crdownload"):
            return False
    return not glob.glob(os.path.join(ddir, "*.crdownload"))


def step(d, page, s, ddir):
    do = s["do"]
    if do == "import":
        reset(d, "card-result")
        by_id(d, "card-file").send_keys(os.path.abspath(s["file"]))
        if s.get("pass"):
            by_id(d, "card-pass").send_keys(s["pass"])
        submit(d, "import-form")
        r = result(d, "card-result")
        r["state"] = state(d)
        return r
    if do == "activate":
        reset(d, "card-result")
        by_id(d, "access-code").send_keys(s["code"])
        submit(d, "activate-form")
        r = result(d, "card-result")
        r["state"] = state(d)
        return r
    if do == "send":
        reset(d, "seal-result")
        d.execute_script("document.getElementById('seal-files').value = '';")
        by_id(d, "seal-files").send_keys("\n".join(os.path.abspath(f) for f in s["files"]))
        by_id(d, "seal-to").clear()
        by_id(d, "seal-to").send_keys(s["to"])
        t0 = time.time()
        submit(d, "seal-form")
        r = result(d, "seal-result")
        r["seconds"] = round(time.time() - t0, 2)
        r["state"] = state(d)
        return r
    if do == "send_reload":
        reset(d, "seal-result")
        d.execute_script("document.getElementById('seal-progress').removeAttribute('data-phase');"
                         "document.getElementById('seal-files').value = '';")
        by_id(d, "seal-files").send_keys(os.path.abspath(s["file"]))
        by_id(d, "seal-to").clear()
        by_id(d, "seal-to").send_keys(s["to"])
        t0 = time.time()
        submit(d, "seal-form")
        at = float(s.get("at", 0.3))

        def uploading(drv):
            p = by_id(drv, "seal-progress")
            if by_id(drv, "seal-result").get_attribute("data-state") == "done":
                return "finished"
            mx = float(p.get_attribute("max") or 1)
            return p.get_attribute("data-phase") == "uploading" and \
                float(p.get_attribute("value") or 0) >= at * mx
        how = wait_for(d, uploading)
        sealed = round(time.time() - t0, 2)
        seen = {"phase": by_id(d, "seal-progress").get_attribute("data-phase"),
                "value": by_id(d, "seal-progress").get_attribute("value"),
                "max": by_id(d, "seal-progress").get_attribute("max")}
        d.refresh()
        wait_for(d, lambda drv: drv.find_element("tag name", "body").get_attribute("data-client") == "ready")
        return {"reloaded": how is True, "at": seen, "seconds": sealed, "state": state(d)}
    if do == "receive":
        reset(d, "receive-result")
        t0 = time.time()
        click(d, "receive-all")
        r = result(d, "receive-result")
        r["seconds"] = round(time.time() - t0, 2)
        r["state"] = state(d)
        return r
    if do == "downloads":
        t0 = time.time()
        wait_for(d, lambda drv: downloads_done(ddir, s["names"]))
        return {"seconds": round(time.time() - t0, 2), "files": sorted(os.listdir(ddir))}
    if do == "confirm":
        reset(d, "receive-result")
        click(d, "confirm-saved")
        r = result(d, "receive-result")
        r["state"] = state(d)
        return r
    if do == "export":
        reset(d, "card-result")
        if s.get("pass"):
            by_id(d, "export-pass").send_keys(s["pass"])
        submit(d, "export-form")
        accept_alert(d)
        r = result(d, "card-result")
        r["state"] = state(d)
        return r
    if do == "status":
        from selenium.webdriver.common.by import By
        reset(d, "sent-result")
        if s.get("message"):
            row = d.find_element(By.CSS_SELECTOR, "#sent-table tr[data-message='%s']" % s["message"])
        else:   # the oldest sent message
            row = d.find_elements(By.CSS_SELECTOR, "#sent-table tr")[0]
        row.find_element(By.TAG_NAME, "button").click()
        return result(d, "sent-result")
    if do == "watch":
        # tick "Keep watching"; then (optionally) run a command, e.g. kmdc
        # send, and wait until the page lists count deliveries
        import subprocess
        by_id(d, "mailbox-watch").click()
        t0 = time.time()
        before = by_id(d, "mailbox-count").get_attribute("data-count")
        rc = None
        if s.get("then"):
            time.sleep(1)
            rc = subprocess.run(s["then"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=WAIT).returncode
        t1 = time.time()
        wait_for(d, lambda drv: by_id(drv, "mailbox-count").get_attribute("data-count") == str(s["count"]))
        seen = time.time()
        by_id(d, "mailbox-watch").click()
        return {"before": before, "then_rc": rc, "seconds": round(seen - t1, 2),
                "state": state(d)}
    if do == "state":
        return state(d)
    if do == "vectors":
        return vectors(d, s["vectors"], s["cards"])
    if do == "cmd":
        import subprocess
        t0 = time.time()
        p = subprocess.run(s["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=WAIT)
        return {"rc": p.returncode, "out": p.stdout.decode(errors="replace"),
                "seconds": round(time.time() - t0, 2)}
    if do == "reload":
        open_page(d, page)
        return state(d)
    if do == "js":
        return d.execute_async_script(s["script"])
    raise ValueError("unknown step " + do)


def vectors(d, vdir, cdir):
    data = {"scrypt": SCRYPT_RFC7914, "pbkdf2": PBKDF2_RFC7914, "cards": {}}
    for name in ("chain", "kdf", "activation", "request", "envelopes"):
        with open(os.path.join(vdir, name + ".json")) as f:
            data[name] = bigints_as_strings(json.load(f))
    for p in sorted(glob.glob(os.path.join(cdir, "*.card"))):
        with open(p, "rb") as f:
            b = f.read()
        n = os.path.basename(p)
        data["cards"][n] = {"hex": b.hex(), "pass": "fuzz" if n.startswith("scrypt") else "",
                            "bad": n == "short.card"}
    t0 = time.time()
    return {"results": d.execute_async_script(VECTOR_JS, data),
            "seconds": round(time.time() - t0, 2)}


def requests_made(d):
    out = []
    for e in d.get_log("performance"):
        try:
            m = json.loads(e["message"])["message"]
        except (ValueError, KeyError):
            continue
        if m.get("method") == "Network.requestWillBeSent":
            rq = m["params"]["request"]
            if rq.get("url", "").startswith(("http:", "https:")):
                out.append([rq.get("method"), rq.get("url"), rq.get("postData")])
    return out


def bigints_as_strings(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v) if abs(v) > 2 ** 52 else v
    if isinstance(v, list):
        return [bigints_as_strings(x) for x in v]
    if isinstance(v, dict):
        return {k: bigints_as_strings(x) for k, x in v.items()}
    return v


def main(argv):
    opts = {"profile": None, "downloads": None, "driver_log": None}
    args = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--profile", "--downloads", "--driver-log"):
            if i + 1 >= len(argv):
                usage(a + " needs a value")
            opts[a[2:].replace("-", "_")] = argv[i + 1]
            i += 1
        elif a.startswith("--"):
            usage("unknown option " + a)
        else:
            args.append(a)
        i += 1
    if not args or args[0] not in ("vectors", "run") or \
            (args[0] == "vectors" and len(args) != 4) or (args[0] == "run" and len(args) != 3):
        usage("vectors PAGE_URL VECTOR_DIR CARD_DIR | run PAGE_URL STEPS_JSON")
    profile = opts["profile"]
    if profile is None:
        import tempfile
        profile = tempfile.mkdtemp(prefix="kmdc-chromium-")
    d = None
    out = {}
    try:
        d = start_browser(profile, opts["downloads"], opts["driver_log"])
        open_page(d, args[1])
        if args[0] == "vectors":
            out.update(vectors(d, args[2], args[3]))
        else:
            steps = json.loads(args[2])
            out["steps"] = []
            for s in steps:
                try:
                    out["steps"].append(step(d, args[1], s, opts["downloads"]))
                except Exception as e:  # one failed step ends the run, reported
                    out["steps"].append({"error": "%s: %s" % (type(e).__name__, e)})
                    break
        out["csp_errors"] = [e.get("message", "") for e in d.get_log("browser")
                             if "Content Security Policy" in e.get("message", "")]
        out["csp_errors"] += d.execute_script(
            "return window.KMDC_CLIENT ? window.KMDC_CLIENT.cspViolations() : ['no client'];")
        out["requests"] = requests_made(d)
    except Exception as e:
        print("browser_client.py: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        if d is not None:
            try:
                d.quit()
            except Exception:
                pass
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
