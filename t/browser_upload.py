#!/usr/bin/python3
"""t/browser_upload.py - drive Debian's headless Chromium through the browser
page of mod_kmdc (GET {location}/), for t/070_browser.t.

  browser_upload.py [options] upload PAGE_URL FILE
      open PAGE_URL, put FILE into the upload form, submit it and wait for
      the rendered answer
  browser_upload.py [options] status PAGE_URL MESSAGE_ID AUTHORIZATION
      open PAGE_URL, fill in the status form (AUTHORIZATION is the line
      `kmdc sign GET /kmdc/messages/ID` printed) and wait for the answer

Options:
  --no-js            run with JavaScript switched off (upload only): the
                     form then posts itself and the browser shows the JSON
  --screenshot PNG   save a screenshot of the whole page at the end
  --driver-log FILE  chromedriver's log (default: none)

Prints one JSON object on stdout: {"status": "201", "title": ...,
"message": ..., "deliveries": ..., "recipients": [[address, state], ...],
"url": ..., "body": ..., "csp_errors": [...]}; fields the mode does not
produce are absent.  Exits 0 when the page answered (whatever it answered),
2 on a usage error, 1 when the browser could not be driven.

Needs the Debian packages chromium, chromium-driver and python3-selenium.
Chromium runs headless with a fresh profile in a temporary folder, without
the sandbox (the tests may run as root), and talks to nothing but PAGE_URL.
KMDC_CHROMIUM and KMDC_CHROMEDRIVER override the binaries.
"""
import json
import os
import shutil
import sys
import tempfile

WAIT_SECONDS = 60


def usage(msg):
    print("browser_upload.py: " + msg, file=sys.stderr)
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    opts = {"no_js": False, "screenshot": None, "driver_log": None}
    args = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--no-js":
            opts["no_js"] = True
        elif a in ("--screenshot", "--driver-log"):
            if i + 1 >= len(argv):
                usage(a + " needs a value")
            opts[a[2:].replace("-", "_")] = argv[i + 1]
            i += 1
        elif a.startswith("--"):
            usage("unknown option " + a)
        else:
            args.append(a)
        i += 1
    if not args or args[0] not in ("upload", "status"):
        usage("the mode is upload or status")
    if args[0] == "upload" and len(args) != 3:
        usage("upload takes PAGE_URL FILE")
    if args[0] == "status" and (len(args) != 4 or opts["no_js"]):
        usage("status takes PAGE_URL MESSAGE_ID AUTHORIZATION (and needs JavaScript)")
    return opts, args


def start_browser(profile, opts):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("KMDC_CHROMIUM", "/usr/bin/chromium")
    chromedriver = os.environ.get("KMDC_CHROMEDRIVER", "/usr/bin/chromedriver")
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--no-proxy-server",
                 "--window-size=1000,900", "--user-data-dir=" + profile):
        o.add_argument(flag)
    if opts["no_js"]:
        o.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver,
                      log_path=opts["driver_log"] or os.devnull)
    return webdriver.Chrome(service=service, options=o)


def wait_done(driver, element_id):
    """Wait until the page marked the answer in element_id as rendered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        e = d.find_element(By.ID, element_id)
        return e if e.get_attribute("data-state") == "done" else False

    return WebDriverWait(driver, WAIT_SECONDS).until(done)


def text_of(driver, element_id):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else None


def upload(driver, page, path, opts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = {}
    driver.get(page)
    driver.find_element(By.ID, "envelope").send_keys(os.path.abspath(path))
    form = driver.find_element(By.ID, "send-form")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    if opts["no_js"]:
        # the browser leaves the page and shows the JSON answer itself
        WebDriverWait(driver, WAIT_SECONDS).until(
            lambda d: d.current_url != page and d.execute_script(
                "return document.readyState") == "complete")
        out["body"] = driver.find_element(By.TAG_NAME, "body").text
        return out
    res = wait_done(driver, "send-result")
    out["status"] = res.get_attribute("data-status")
    out["title"] = res.find_element(By.TAG_NAME, "h3").text
    out["text"] = res.text
    msg = text_of(driver, "send-message")
    if msg is not None:
        out["message"] = msg
        dds = res.find_elements(By.TAG_NAME, "dd")
        if len(dds) >= 2:
            out["deliveries"] = dds[1].text
    # what the page prepared for the status form
    out["status_id"] = driver.find_element(By.ID, "message-id").get_attribute("value")
    out["sign_command"] = text_of(driver, "sign-command")
    return out


def status(driver, page, msgid, auth):
    from selenium.webdriver.common.by import By

    out = {}
    driver.get(page)
    driver.find_element(By.ID, "message-id").send_keys(msgid)
    driver.find_element(By.ID, "authorization").send_keys(auth)
    form = driver.find_element(By.ID, "status-form")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    res = wait_done(driver, "status-result")
    out["status"] = res.get_attribute("data-status")
    out["title"] = res.find_element(By.TAG_NAME, "h3").text
    out["text"] = res.text
    rows = []
    for tr in res.find_elements(By.CSS_SELECTOR, "#status-table tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        if len(cells) == 2:
            rows.append(cells)
    out["recipients"] = rows
    out["auth_left"] = driver.find_element(By.ID, "authorization").get_attribute("value")
    return out


def screenshot(driver, path):
    """The whole page, not only the window: the viewport is stretched to the
    document's height first (DevTools protocol)."""
    height = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, 400)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1000, "height": min(int(height), 4000),
                            "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(path)


def main(argv):
    opts, args = parse_args(argv)
    profile = tempfile.mkdtemp(prefix="kmdc-chromium-")
    driver = None
    try:
        driver = start_browser(profile, opts)
        if args[0] == "upload":
            out = upload(driver, args[1], args[2], opts)
        else:
            out = status(driver, args[1], args[2], args[3])
        out["url"] = driver.current_url
        out["csp_errors"] = [e.get("message", "") for e in driver.get_log("browser")
                             if "Content Security Policy" in e.get("message", "")]
        if opts["screenshot"]:
            screenshot(driver, opts["screenshot"])
    except Exception as e:  # report, never hang: the .t prints it
        print("browser_upload.py: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
