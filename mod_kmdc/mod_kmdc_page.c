/*
 * mod_kmdc_page.c - GET {location} and GET {location}/: the browser page.
 *
 * A small, dependency-free HTML page with two forms: an upload form for a
 * sealed .kmdc envelope (multipart/form-data with one file part "envelope",
 * posted to {location}/send, exactly what docs/API.md accepts), and a status
 * form for GET {location}/messages/{id}, which needs a signed Authorization
 * header the browser cannot make: the user pastes the line `kmdc sign`
 * printed.  A little inline script sends both with fetch() and renders the
 * answer (status, message id, deliveries, recipients, or the error code and
 * message) with textContent only; without script the upload form still posts
 * and the browser shows the JSON answer.
 *
 * The page loads nothing else (no CDN, fonts or images).  Its
 * Content-Security-Policy allows exactly the inline style and script below
 * by their SHA-256 hashes, computed here from the very bytes that are sent,
 * so the policy can never go stale when the page is edited.  The only
 * variable part is the location prefix, HTML-escaped, outside the script and
 * the style (the script reads it from the form's data-base attribute).
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <string.h>

#include "apr_base64.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_crypto.h"
#include "kmdc_err.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

/* The inline style sheet; its hash goes into style-src. */
static const char page_style[] =
    ":root { color-scheme: light dark; font-family: system-ui, sans-serif; line-height: 1.5; }\n"
    "body { margin: 0; padding: 1rem; }\n"
    "main { max-width: 42rem; margin: 0 auto; }\n"
    "h1 { font-size: 1.5rem; }\n"
    "h2 { font-size: 1.2rem; margin-top: 2rem; }\n"
    "h3 { font-size: 1rem; margin: 0 0 .5rem; }\n"
    "[hidden] { display: none !important; }\n"
    "form { display: grid; gap: .5rem; padding: 1rem; border: 1px solid #8888; border-radius: .5rem; }\n"
    "label { font-weight: 600; }\n"
    "input, textarea, button { font: inherit; }\n"
    "input[type=text], textarea { width: 100%; box-sizing: border-box; font-family: ui-monospace, monospace; }\n"
    "button { justify-self: start; padding: .4rem 1.2rem; }\n"
    "code { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }\n"
    ".hint { font-size: .9rem; margin: 0; }\n"
    ".result { margin-top: 1rem; padding: .75rem 1rem; border-left: .3rem solid #888; border-radius: .25rem; }\n"
    ".result p { margin: 0; }\n"
    ".ok { border-color: #2a7d2a; background: #2a7d2a1a; }\n"
    ".error { border-color: #b3261e; background: #b3261e1a; }\n"
    "dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }\n"
    "dt { font-weight: 600; }\n"
    "dd { margin: 0; }\n"
    "table { border-collapse: collapse; margin-top: .5rem; }\n"
    "th, td { text-align: left; padding: .2rem 1.5rem .2rem 0; }\n";

/* The inline script; its hash goes into script-src.  It never writes markup:
 * every value from an answer goes in through textContent. */
static const char page_script[] =
    "(function () {\n"
    "  'use strict';\n"
    "  var sendForm = document.getElementById('send-form');\n"
    "  var sendOut = document.getElementById('send-result');\n"
    "  var statusForm = document.getElementById('status-form');\n"
    "  var statusOut = document.getElementById('status-result');\n"
    "  var idInput = document.getElementById('message-id');\n"
    "  var authInput = document.getElementById('authorization');\n"
    "  var signCmd = document.getElementById('sign-command');\n"
    "  var base = sendForm.getAttribute('data-base');\n"
    "  var idPattern = /^[0-9a-f]{16}$/;\n"
    "\n"
    "  function el(tag, text, id) {\n"
    "    var e = document.createElement(tag);\n"
    "    if (text !== undefined) { e.textContent = text; }\n"
    "    if (id) { e.id = id; }\n"
    "    return e;\n"
    "  }\n"
    "\n"
    "  function pairs(list) {\n"
    "    var d = el('dl');\n"
    "    list.forEach(function (p) {\n"
    "      var dd = el('dd');\n"
    "      d.appendChild(el('dt', p[0]));\n"
    "      if (p[2]) { dd.appendChild(el('code', p[1], p[2])); } else { dd.textContent = p[1]; }\n"
    "      d.appendChild(dd);\n"
    "    });\n"
    "    return d;\n"
    "  }\n"
    "\n"
    "  function show(out, status, kind, title, content) {\n"
    "    out.textContent = '';\n"
    "    out.className = 'result ' + kind;\n"
    "    out.appendChild(el('h3', title));\n"
    "    if (content) { out.appendChild(content); }\n"
    "    out.setAttribute('data-status', String(status));\n"
    "    out.setAttribute('data-state', kind === 'busy' ? 'busy' : 'done');\n"
    "    out.hidden = false;\n"
    "  }\n"
    "\n"
    "  function showError(out, r) {\n"
    "    var j = r.json;\n"
    "    if (j && typeof j.error === 'string') {\n"
    "      show(out, r.status, 'error', r.status + ' ' + j.error,\n"
    "           el('p', typeof j.message === 'string' ? j.message : ''));\n"
    "    } else {\n"
    "      show(out, r.status, 'error', r.status + ' ' + (r.reason || 'error'),\n"
    "           el('p', 'The server did not answer with a KMDC error object.'));\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function showNetError(out, e) {\n"
    "    show(out, 0, 'error', 'The request failed', el('p', String(e && e.message ? e.message : e)));\n"
    "  }\n"
    "\n"
    "  function call(url, init) {\n"
    "    return fetch(url, init).then(function (res) {\n"
    "      return res.text().then(function (text) {\n"
    "        var json = null;\n"
    "        try { json = JSON.parse(text); } catch (e) { json = null; }\n"
    "        return { status: res.status, reason: res.statusText, json: json };\n"
    "      });\n"
    "    });\n"
    "  }\n"
    "\n"
    "  function updateSign() {\n"
    "    var id = idInput.value.trim();\n"
    "    signCmd.textContent = 'kmdc sign GET ' + base + '/messages/' + (idPattern.test(id) ? id : 'ID');\n"
    "  }\n"
    "\n"
    "  sendForm.addEventListener('submit', function (ev) {\n"
    "    var button = sendForm.querySelector('button');\n"
    "    var file = document.getElementById('envelope');\n"
    "    ev.preventDefault();\n"
    "    if (!file.files || file.files.length !== 1) {\n"
    "      show(sendOut, 0, 'error', 'No file chosen', el('p', 'Choose one sealed .kmdc file.'));\n"
    "      return;\n"
    "    }\n"
    "    button.disabled = true;\n"
    "    show(sendOut, 0, 'busy', 'Uploading\\u2026');\n"
    "    call(sendForm.action, { method: 'POST', body: new FormData(sendForm), cache: 'no-store' })\n"
    "      .then(function (r) {\n"
    "        var j = r.json;\n"
    "        if ((r.status === 201 || r.status === 200) && j && typeof j.message === 'string') {\n"
    "          show(sendOut, r.status, 'ok', r.status === 201\n"
    "               ? '201 Created: the message is queued for its recipients'\n"
    "               : '200 OK: this envelope was sent before; the first answer is repeated',\n"
    "               pairs([['Message id', j.message, 'send-message'],\n"
    "                      ['Deliveries', String(j.deliveries)]]));\n"
    "          idInput.value = j.message;\n"
    "          updateSign();\n"
    "        } else {\n"
    "          showError(sendOut, r);\n"
    "        }\n"
    "      })\n"
    "      .catch(function (e) { showNetError(sendOut, e); })\n"
    "      .then(function () { button.disabled = false; });\n"
    "  });\n"
    "\n"
    "  statusForm.addEventListener('submit', function (ev) {\n"
    "    var button = statusForm.querySelector('button');\n"
    "    var id = idInput.value.trim();\n"
    "    var auth = authInput.value.trim().replace(/^authorization:\\s*/i, '');\n"
    "    ev.preventDefault();\n"
    "    if (!idPattern.test(id)) {\n"
    "      show(statusOut, 0, 'error', 'Not a message id',\n"
    "           el('p', 'A message id is 16 lowercase hex digits.'));\n"
    "      return;\n"
    "    }\n"
    "    if (!/^KMDC1-HMAC-SHA256 [!-~]+$/.test(auth)) {\n"
    "      show(statusOut, 0, 'error', 'Not a signed header',\n"
    "           el('p', 'Paste the whole line that kmdc sign printed.'));\n"
    "      return;\n"
    "    }\n"
    "    button.disabled = true;\n"
    "    show(statusOut, 0, 'busy', 'Asking\\u2026');\n"
    "    call(base + '/messages/' + id, { headers: { 'Authorization': auth }, cache: 'no-store' })\n"
    "      .then(function (r) {\n"
    "        var j = r.json;\n"
    "        var box, table, head;\n"
    "        if (r.status === 200 && j && Array.isArray(j.recipients)) {\n"
    "          box = el('div');\n"
    "          box.appendChild(pairs([['Message id', String(j.message), 'status-message'],\n"
    "                                 ['Created', typeof j.created === 'number'\n"
    "                                  ? new Date(j.created).toISOString() : '?'],\n"
    "                                 ['Size', String(j.size) + ' bytes']]));\n"
    "          table = el('table', undefined, 'status-table');\n"
    "          head = el('tr');\n"
    "          ['Recipient', 'State'].forEach(function (name) {\n"
    "            var th = el('th', name);\n"
    "            th.setAttribute('scope', 'col');\n"
    "            head.appendChild(th);\n"
    "          });\n"
    "          table.appendChild(head);\n"
    "          j.recipients.forEach(function (rc) {\n"
    "            var tr = el('tr');\n"
    "            tr.appendChild(el('td', String(rc.address)));\n"
    "            tr.appendChild(el('td', String(rc.state)));\n"
    "            table.appendChild(tr);\n"
    "          });\n"
    "          box.appendChild(table);\n"
    "          show(statusOut, r.status, 'ok', '200 OK: each recipient\\'s state', box);\n"
    "        } else {\n"
    "          showError(statusOut, r);\n"
    "        }\n"
    "        authInput.value = '';\n"
    "      })\n"
    "      .catch(function (e) { showNetError(statusOut, e); })\n"
    "      .then(function () { button.disabled = false; });\n"
    "  });\n"
    "\n"
    "  idInput.addEventListener('input', updateSign);\n"
    "  statusForm.hidden = false;\n"
    "  document.getElementById('status-nojs').hidden = true;\n"
    "  updateSign();\n"
    "}());\n";

/* The markup around the style and the script; @BASE@ marks where the
 * HTML-escaped location prefix goes (the pieces are joined in kmdc_handle_page). */
static const char page_head[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<meta name=\"referrer\" content=\"no-referrer\">\n"
    "<title>KMDC: send a sealed document</title>\n"
    "<style>";

static const char page_body[] =
    "</style>\n"
    "</head>\n"
    "<body>\n"
    "<main>\n"
    "<h1>Send a sealed document</h1>\n"
    "<p>Seal the document on your own machine with\n"
    "<code>kmdc seal --to ADDRESS -o doc.kmdc FILE</code>, then upload the\n"
    "<code>.kmdc</code> file here: the datacenter checks it and queues it in\n"
    "each recipient's mailbox.  Neither your card nor the readable document\n"
    "ever reaches this page.</p>\n"
    "<form id=\"send-form\" method=\"post\" action=\"@BASE@/send\"\n"
    "      enctype=\"multipart/form-data\" data-base=\"@BASE@\">\n"
    "<label for=\"envelope\">Sealed envelope (.kmdc file)</label>\n"
    "<input id=\"envelope\" name=\"envelope\" type=\"file\" required\n"
    "       accept=\".kmdc,application/vnd.kmdc.envelope\"\n"
    "       aria-describedby=\"envelope-hint\">\n"
    "<p id=\"envelope-hint\" class=\"hint\">Sending the same file again only\n"
    "repeats the first answer; it never delivers twice.</p>\n"
    "<button type=\"submit\">Upload</button>\n"
    "</form>\n"
    "<section id=\"send-result\" class=\"result\" aria-live=\"polite\" hidden></section>\n"
    "\n"
    "<h2>Check a sent message</h2>\n"
    "<p>A browser cannot sign requests because the card's key never leaves\n"
    "your machine, so run <code id=\"sign-command\">kmdc sign GET\n"
    "@BASE@/messages/ID</code> with the sending card and paste the header it\n"
    "prints (it is good for one request within five minutes).</p>\n"
    "<p id=\"status-nojs\">Checking a message needs JavaScript; without it use\n"
    "<code>curl -H \"$(kmdc sign GET @BASE@/messages/ID)\"\n"
    "https://HOST@BASE@/messages/ID</code>.</p>\n"
    "<form id=\"status-form\" hidden>\n"
    "<label for=\"message-id\">Message id</label>\n"
    "<input id=\"message-id\" name=\"id\" type=\"text\" required maxlength=\"16\"\n"
    "       pattern=\"[0-9a-f]{16}\" autocomplete=\"off\" spellcheck=\"false\"\n"
    "       aria-describedby=\"message-id-hint\">\n"
    "<p id=\"message-id-hint\" class=\"hint\">16 hex digits, as the upload\n"
    "answered.</p>\n"
    "<label for=\"authorization\">Authorization header</label>\n"
    "<textarea id=\"authorization\" name=\"authorization\" rows=\"3\" required\n"
    "          autocomplete=\"off\" spellcheck=\"false\"\n"
    "          aria-describedby=\"authorization-hint\"></textarea>\n"
    "<p id=\"authorization-hint\" class=\"hint\">The whole line\n"
    "<code>Authorization: KMDC1-HMAC-SHA256 ...</code> that kmdc sign\n"
    "printed.</p>\n"
    "<button type=\"submit\">Check status</button>\n"
    "</form>\n"
    "<section id=\"status-result\" class=\"result\" aria-live=\"polite\" hidden></section>\n"
    "</main>\n"
    "<script>";

static const char page_tail[] =
    "</script>\n"
    "</body>\n"
    "</html>\n";

#define PAGE_BASE_MARK "@BASE@"

/* "'sha256-<base64>'" of text for a CSP source list, from p; NULL when
 * hashing failed. */
static const char *csp_hash(apr_pool_t *p, const char *text)
{
    uint8_t h[KMDC_HASH_LEN];
    char b64[64];

    if (apr_base64_encode_len((int)sizeof(h)) > (int)sizeof(b64)
        || kmdc_sha256(h, text, strlen(text), NULL) != KMDC_OK) {
        return NULL;
    }
    apr_base64_encode_binary(b64, h, (int)sizeof(h));
    return apr_pstrcat(p, "'sha256-", b64, "'", NULL);
}

/* tmpl with every PAGE_BASE_MARK replaced by base, from p. */
static char *subst_base(apr_pool_t *p, const char *tmpl, const char *base)
{
    const apr_size_t mlen = sizeof(PAGE_BASE_MARK) - 1;
    const apr_size_t blen = strlen(base);
    const char *s = tmpl;
    const char *m = NULL;
    apr_size_t n = 0, len, at = 0;
    char *out = NULL;

    while ((m = strstr(s, PAGE_BASE_MARK)) != NULL) {
        n++;
        s = m + mlen;
    }
    len = strlen(tmpl) - n * mlen + n * blen;
    out = apr_palloc(p, len + 1);
    s = tmpl;
    while ((m = strstr(s, PAGE_BASE_MARK)) != NULL) {
        apr_size_t k = (apr_size_t)(m - s);

        memcpy(out + at, s, k);
        at += k;
        memcpy(out + at, base, blen);
        at += blen;
        s = m + mlen;
    }
    memcpy(out + at, s, strlen(s) + 1);
    return out;
}

int kmdc_handle_page(kmdc_req *kr)
{
    request_rec *r = kr->r;
    const char *script_src = csp_hash(r->pool, page_script);
    const char *style_src = csp_hash(r->pool, page_style);
    const char *body = NULL;
    const char *page = NULL;
    const char *csp = NULL;
    apr_size_t len;

    if (script_src == NULL || style_src == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: could not hash the browser page's script or style");
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                               "internal error; see the server log");
    }
    body = subst_base(r->pool, page_body, ap_escape_html(r->pool, kr->base));
    page = apr_pstrcat(r->pool, page_head, page_style, body, page_script,
                       page_tail, NULL);
    len = strlen(page);
    csp = apr_pstrcat(r->pool, "default-src 'self'; script-src ", script_src,
                      "; style-src ", style_src, "; object-src 'none'; "
                      "base-uri 'none'; form-action 'self'; "
                      "frame-ancestors 'none'", NULL);

    r->status = HTTP_OK;
    apr_table_setn(r->headers_out, "Content-Security-Policy", csp);
    apr_table_setn(r->headers_out, "X-Frame-Options", "DENY");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    apr_table_setn(r->headers_out, "Referrer-Policy", "no-referrer");
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache");
    ap_set_content_type(r, "text/html; charset=utf-8");
    ap_set_content_length(r, (apr_off_t)len);
    if (!r->header_only && ap_rwrite(page, (int)len, r) < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "kmdc: client went away while sending the page");
    }
    return OK;
}
