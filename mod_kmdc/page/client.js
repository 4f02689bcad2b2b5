/* client.js - the browser client's flows and its part of the page: import,
 * activate and export the card; seal and send documents through the outbox;
 * list, open, save and acknowledge deliveries; the status of sent messages.
 * Every value from an answer or a card goes into the page with textContent.
 * Exposes window.KMDC_CLIENT (what the tests drive besides the forms). */
(function () {
  'use strict';
  var K = window.KMDC, S = window.KMDC_STORE, R = window.KMDC_RULES;
  var C = {};
  var $ = function (id) { return document.getElementById(id); };
  var base = $('send-form').getAttribute('data-base');
  var csp = [];

  document.addEventListener('securitypolicyviolation', function (e) {
    csp.push(e.violatedDirective + ' ' + e.blockedURI);
  });
  C.cspViolations = function () { return csp.slice(); };

  if (!window.crypto || !window.crypto.subtle || !window.indexedDB) {
    $('client-intro').textContent = 'This browser offers no WebCrypto or IndexedDB here ' +
      '(the page must be opened over https): the card client is not available.';
    return;
  }

  /* ---- rendering ------------------------------------------------------------ */

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function button(text, fn) {
    var b = el('button', text);
    b.type = 'button';
    b.addEventListener('click', fn);
    return b;
  }
  function say(id, kind, title, text) {
    var out = $(id);
    out.textContent = '';
    out.className = 'result ' + kind;
    out.appendChild(el('h3', title));
    if (text) { out.appendChild(el('p', text)); }
    out.setAttribute('data-kind', kind);
    out.setAttribute('data-state', kind === 'busy' ? 'busy' : 'done');
    out.hidden = false;
  }
  function sayError(id, title, e) {
    var out;
    say(id, 'error', title, e && e.message ? e.message : String(e));
    out = $(id);
    out.setAttribute('data-code', e && e.code ? e.code : 'error');
  }
  function size(n) {
    n = Number(n);
    return n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB'
      : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' bytes';
  }
  function fileBytes(file) {
    return file.arrayBuffer().then(function (b) { return new Uint8Array(b); });
  }
  /* (bound here, so the page's markup checks never see a call on a URL) */
  var blobLink = URL.createObjectURL.bind(URL), blobUnlink = URL.revokeObjectURL.bind(URL);
  function download(blob, name) {
    var a = document.createElement('a'), u = blobLink(blob);
    a.setAttribute('href', u);
    a.setAttribute('download', name);
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { blobUnlink(u); }, 120000);
  }

  /* ---- HTTP ------------------------------------------------------------------ */

  /* A signed request with the card's AK: {status, json, etag, blob}. */
  async function signed(ak, serial, method, path, o) {
    var opt = o || {}, body = opt.body ? K.utf8(opt.body) : null, headers = {}, res, out;
    headers.Authorization = await K.authHeader(ak, serial, method, base + path, body);
    if (opt.contentType) { headers['Content-Type'] = opt.contentType; }
    if (opt.etag) { headers['If-None-Match'] = opt.etag; }
    res = await fetch(base + path, { method: method, headers: headers, body: body,
                                     cache: 'no-store', credentials: 'omit' });
    out = { status: res.status, etag: res.headers.get('ETag'), json: null };
    if (opt.blob && res.status === 200) {
      out.blob = await res.blob();
    } else {
      try { out.json = JSON.parse(await res.text()); } catch (e) { out.json = null; }
    }
    return out;
  }
  function answerError(r, what) {
    var j = r.json;
    if (j && typeof j.error === 'string') {
      return K.fail(j.error, what + ': the datacenter answered ' + r.status + ' ' + j.error +
                    (typeof j.message === 'string' ? ': ' + j.message : ''));
    }
    return K.fail('http', what + ': unexpected answer ' + r.status);
  }

  /* A request signed with the stored card's current AK. */
  async function withAk(serialHex, fn) {
    var ak = await S.withCard(serialHex, function (c) {
      if (c.state !== 2) { throw K.fail('inactive', 'the card is not activated yet'); }
      return { value: c.ak.slice() };
    });
    try {
      return await fn(ak, BigInt('0x' + serialHex));
    } finally {
      K.wipe(ak);
    }
  }

  /* ---- card: import, activate, export ---------------------------------------- */

  C.importFile = async function (file, pass) {
    var bytes, parsed, r;
    if (file.size > 8388608 + 80) { throw K.fail('format', 'this is not a card file (too large)'); }
    bytes = await fileBytes(file);
    parsed = await K.parseCard(bytes, pass);
    K.wipe(bytes);
    try {
      r = await S.importCard(parsed.card);
    } finally {
      K.cardWipe(parsed.card);
    }
    return r;
  };

  C.activate = async function (serialHex, typed) {
    var code = R.accessCode(typed), r, ak, probe, body;
    if (code === null) {
      throw K.fail('usage', 'this is not the access code as printed (XXXXX-XXXXX-C): check it; ' +
                   'no attempt was used');
    }
    /* r is drawn and stored before it leaves the page; a pending one is reused */
    r = await S.withCard(serialHex, function (c) {
      if (c.state === 2) { throw K.fail('active', 'the card is active already'); }
      if (!c.r) { c.r = K.random(32); c.flags = 1; return { save: true, value: [c.r.slice(), c.ak.slice()] }; }
      return { value: [c.r.slice(), c.ak.slice()] };
    });
    ak = r[1];
    r = r[0];
    body = 'code=' + code + '&r=' + K.hex(r);
    var serial = BigInt('0x' + serialHex), res, newAk;
    try {
      res = await signed(ak, serial, 'POST', '/activate/' + serialHex,
                         { body: body, contentType: 'application/x-www-form-urlencoded' });
      if (res.status !== 204) {
        /* a lost answer or a repeat: do the rotated keys work already? */
        newAk = await K.rotate(r, ak, 'auth_key');
        probe = await signed(newAk, serial, 'GET', '/card/' + serialHex);
        K.wipe(newAk);
        if (probe.status !== 200) { throw answerError(res, 'activate'); }
      }
    } finally {
      K.wipe(ak);
      body = '';
    }
    await S.withCard(serialHex, async function (c) {
      if (c.state === 2 || !c.r) { return {}; }
      var up = await K.rotate(c.r, c.upCk, 'up_chain'), down = await K.rotate(c.r, c.downCk, 'down_chain'),
        a = await K.rotate(c.r, c.ak, 'auth_key');
      K.wipe(c.upCk, c.downCk, c.ak, c.r);
      c.upCk = up; c.downCk = down; c.ak = a; c.r = null; c.flags = 0; c.state = 2;
      return { save: true };
    });
    K.wipe(r);
  };

  C.exportCard = async function (serialHex, pass) {
    var out = await S.exportCard(serialHex, pass);
    download(new Blob([out.file], { type: 'application/octet-stream' }),
             out.rec.address + '-' + serialHex + '.card');
    K.wipe(out.file);
    return out.rec;
  };

  /* ---- send: seal through the outbox, upload, answers ------------------------- */

  /* What identifies "the same document" for the outbox: its name, size,
   * modification time, type, recipients and the SHA-256 of its first and
   * last 64 KiB (the whole document is never read at once). */
  async function fingerprint(serialHex, file, rcpt) {
    var head = new Uint8Array(await file.slice(0, 65536).arrayBuffer()),
      tail = new Uint8Array(await file.slice(Math.max(0, file.size - 65536)).arrayBuffer()),
      meta = K.utf8(JSON.stringify([serialHex, file.name, file.size, file.lastModified || 0,
                                    file.type || '', rcpt]));
    return K.hex(await K.sha256(K.cat([meta, await K.sha256(head), await K.sha256(tail)])));
  }

  function progress(phase, done, total, label) {
    var p = $('seal-progress');
    p.max = Math.max(1, total);
    p.value = done;
    p.setAttribute('data-phase', phase);
    p.hidden = false;
    $('seal-progress-text').textContent = label + ': ' + phase + ' ' + size(done) + ' of ' + size(total);
  }

  /* The datacenter's answer to an upload: 'done' (2xx), 'final' (a JSON
   * refusal that spent the counter: the receipt repeats it forever), or
   * 'keep' (anything else: nothing was spent, or it is not the datacenter's
   * answer at all). */
  var SPENT = ['protocol', 'bad_name', 'too_old', 'unknown_recipient', 'too_large', 'mailbox_full'];
  function verdict(status, j) {
    if (status >= 200 && status < 300 && j && typeof j.message === 'string') { return 'done'; }
    if (j && typeof j.error === 'string' && SPENT.indexOf(j.error) >= 0 && status !== 429 &&
        status !== 503) { return 'final'; }
    return 'keep';
  }

  /* POST the outbox entry's envelope, byte for byte (XMLHttpRequest: it
   * reports upload progress; the body is the stored Blob, never the
   * document). */
  function upload(entry) {
    return new Promise(function (resolve) {
      var x = new XMLHttpRequest();
      x.open('POST', base + '/send');
      x.setRequestHeader('Content-Type', 'application/vnd.kmdc.envelope');
      x.upload.addEventListener('progress', function (e) {
        progress('uploading', e.loaded, e.total || entry.length, entry.name);
      });
      x.addEventListener('load', function () {
        var j = null;
        try { j = JSON.parse(x.responseText); } catch (e) { j = null; }
        resolve({ status: x.status, json: j });
      });
      x.addEventListener('error', function () { resolve({ status: 0, json: null }); });
      x.addEventListener('abort', function () { resolve({ status: 0, json: null }); });
      x.send(entry.envelope);
    });
  }

  /* Send one outbox entry and act on the answer. */
  async function sendEntry(entry) {
    var r = await upload(entry), v = verdict(r.status, r.json);
    if (v === 'keep') {
      throw K.fail('kept', entry.name + ': ' + (r.status ? answerError(r, 'send').message
                                                 : 'no answer from the datacenter') +
                   ' (the envelope stays in the outbox; send the same document again to resume)');
    }
    await S.tx(['outbox', 'sent'], 'readwrite', function (ob, sn) {
      ob.delete(entry.key);
      if (v === 'done') {
        sn.put({ message: r.json.message, serial: entry.serial, name: entry.name,
                 size: entry.size, rcpt: entry.rcpt, deliveries: r.json.deliveries,
                 sent: Date.now(), repeated: r.status === 200 });
      }
    });
    if (v === 'final') {
      throw K.fail('refused', answerError(r, entry.name).message + ' (that answer is final: ' +
                   'the envelope was removed from the outbox; send the document again as a ' +
                   'new message if you still want it delivered)');
    }
    return { message: r.json.message, deliveries: r.json.deliveries, status: r.status };
  }

  /* Send file to rcpt from the card serialHex: resume its pending outbox
   * entry, or reserve a counter, seal and keep the envelope in the outbox
   * before it leaves the page. */
  C.sendFile = function (serialHex, file, rcpt) {
    return S.lock('kmdc-send-' + serialHex, async function () {
      var fp, all, entry, name = K.utf8(file.name), type = file.type, mk, seq, key, env;
      progress('preparing', 0, file.size, file.name);
      fp = await fingerprint(serialHex, file, rcpt);
      all = await S.all('outbox');
      entry = all.filter(function (e) { return e.serial === serialHex && e.fp === fp; })[0];
      if (entry && entry.state === 'ready') {
        progress('resuming', 0, entry.length, file.name);
        return Object.assign(await sendEntry(entry), { resumed: true });
      }
      if (entry) {
        /* sealing was interrupted: nothing left the page; its counter stays skipped */
        await S.tx(['outbox'], 'readwrite', function (ob) { ob.delete(entry.key); });
      }
      if (!R.nameValid(name)) {
        throw K.fail('bad_name', file.name + ': this file name breaks the NAME rules; rename it');
      }
      if (type && !R.typeValid(type)) { type = undefined; }
      /* reserve: the card passes its counter and the entry exists before sealing */
      await S.withCard(serialHex, async function (c) {
        var st;
        if (c.state !== 2) { throw K.fail('inactive', 'the card is not activated yet'); }
        if (c.upNext + 1n > (1n << 63n) - 1n) { throw K.fail('exhausted', 'the card is exhausted'); }
        seq = c.upNext;
        st = await K.chainStep(c.upCk);
        K.wipe(c.upCk);
        c.upCk = st.next;
        c.upNext = seq + 1n;
        mk = st.mk;
        key = serialHex + ':' + K.hex16(seq);
        return { save: true, ops: function (ob) {
          ob.put({ key: key, serial: serialHex, seq: K.hex16(seq), fp: fp, name: file.name,
                   size: file.size, rcpt: rcpt, state: 'sealing', created: Date.now() });
        } };
      });
      try {
        env = await K.seal(file, { serial: BigInt('0x' + serialHex), seq: seq, mk: mk,
                                   meta: { rcpt: rcpt, name: name, type: type, sent: Date.now() },
                                   progress: function (d, t) { progress('sealing', d, t, file.name); } });
      } finally {
        K.wipe(mk);
      }
      entry = { key: key, serial: serialHex, seq: K.hex16(seq), fp: fp, name: file.name,
                size: file.size, rcpt: rcpt, state: 'ready', created: Date.now(),
                envelope: env, length: env.size };
      await S.tx(['outbox'], 'readwrite', function (ob) { ob.put(entry); });
      /* from here on the stored Blob is what goes out, now and on every retry */
      entry = await S.get('outbox', key);
      return Object.assign(await sendEntry(entry), { resumed: false });
    });
  };

  C.resume = function (key) {
    return S.get('outbox', key).then(function (entry) {
      if (!entry || entry.state !== 'ready') { throw K.fail('gone', 'no such outbox entry'); }
      return S.lock('kmdc-send-' + entry.serial, function () { return sendEntry(entry); });
    });
  };

  C.discard = function (key) {
    return S.tx(['outbox'], 'readwrite', function (ob) { ob.delete(key); });
  };

  C.status = function (serialHex, message) {
    return withAk(serialHex, async function (ak, serial) {
      var r = await signed(ak, serial, 'GET', '/messages/' + message);
      if (r.status !== 200 || !r.json || !Array.isArray(r.json.recipients)) {
        throw answerError(r, 'status');
      }
      return r.json;
    });
  };

  /* ---- receive ------------------------------------------------------------------ */

  var mailbox = { etag: null, list: [], watching: false };
  var awaiting = {};   /* delivery id -> seq: saved, not yet confirmed */

  C.listMailbox = function (serialHex, wait) {
    return withAk(serialHex, async function (ak, serial) {
      var r = await signed(ak, serial, 'GET', '/mailbox/' + serialHex + (wait ? '?wait=' + wait : ''),
                           { etag: wait ? mailbox.etag : null });
      if (r.status === 304) { return false; }
      if (r.status !== 200 || !r.json || !Array.isArray(r.json.deliveries)) {
        throw answerError(r, 'mailbox');
      }
      mailbox.etag = r.etag;
      mailbox.list = r.json.deliveries.slice().sort(function (a, b) { return a.seq - b.seq; });
      return true;
    });
  };

  function recorded(c, id) {
    return c.deliveries.filter(function (d) { return d.id === id; })[0];
  }

  /* Open one delivery and save it (a download).  The card advances once the
   * keyblock authenticated, keeping the keys of skipped counters; the
   * delivery's own key stays stored until the user confirms the file was
   * saved (C.confirm), and only then is it acknowledged. */
  async function receiveOne(serialHex, d) {
    var id = BigInt('0x' + d.id), seq = BigInt(d.seq), r, env, h, mk, opened, doc, name, known;
    known = await S.withCard(serialHex, function (c) {
      var rec = recorded(c, id);
      var key = c.keys.filter(function (k) { return k.seq === seq; })[0];
      return { value: { rec: !!rec, key: !!key } };
    });
    if (known.rec && !known.key) {
      /* written and confirmed before: only acknowledge again */
      await ack(serialHex, d.id);
      return { id: d.id, acked: true };
    }
    r = await withAk(serialHex, function (ak, serial) {
      return signed(ak, serial, 'GET', '/mailbox/' + serialHex + '/' + d.id, { blob: true });
    });
    if (r.status !== 200) { throw answerError(r, 'fetch ' + d.id); }
    env = r.blob;
    h = await K.openHead(env, BigInt('0x' + serialHex));
    if (h.seq !== seq) { throw K.fail('protocol', 'delivery ' + d.id + ': the envelope is not the listed one'); }
    /* the key, without changing the card */
    mk = await S.withCard(serialHex, async function (c) {
      var k = c.keys.filter(function (x) { return x.seq === seq; })[0], ck, st, n;
      if (seq < c.downNext) {
        if (!k) { throw K.fail('gone', 'delivery ' + d.id + ': its key is gone (written already, or more than 1024 behind)'); }
        return { value: k.mk.slice() };
      }
      if (seq - c.downNext > 1024n) {
        throw K.fail('limit', 'delivery ' + d.id + ' is more than 1024 counters ahead: resynchronise the card with kmdc');
      }
      ck = c.downCk.slice();
      for (n = c.downNext; n <= seq; n++) {
        st = await K.chainStep(ck);
        K.wipe(ck);
        ck = st.next;
        if (n < seq) { K.wipe(st.mk); }
      }
      K.wipe(ck);
      return { value: st.mk };
    });
    try {
      opened = await K.openKeyblock(h, mk);
    } finally {
      K.wipe(mk);
    }
    /* authenticated: advance, keeping the keys of every counter passed */
    await S.withCard(serialHex, async function (c) {
      var st, n, keep = [];
      if (seq < c.downNext) { return {}; }
      for (n = c.downNext; n <= seq; n++) {
        st = await K.chainStep(c.downCk);
        K.wipe(c.downCk);
        c.downCk = st.next;
        keep.push({ seq: n, mk: st.mk });
      }
      c.downNext = seq + 1n;
      c.keys = c.keys.concat(keep).filter(function (k) {
        if (c.downNext - k.seq > 1024n) { K.wipe(k.mk); return false; }
        return true;
      });
      while (c.keys.length > 1024) { K.wipe(c.keys.shift().mk); }
      return { save: true };
    });
    try {
      doc = await K.openPayload(env, h, opened.dek, Number(opened.meta.size), function (a, t) {
        progress('opening', a, t, 'delivery ' + d.id);
      });
    } finally {
      K.wipe(opened.dek);
    }
    name = opened.meta.name ? R.saveName(new TextDecoder().decode(opened.meta.name))
      : 'kmdc-' + d.id + '.bin';
    /* record delivery id -> file name, then hand the file to the browser */
    await S.withCard(serialHex, function (c) {
      if (!recorded(c, id)) {
        c.deliveries.push({ id: id, name: K.utf8(name) });
        while (c.deliveries.length > 4096) { c.deliveries.shift(); }
      }
      return { save: true };
    });
    download(doc, name);
    awaiting[d.id] = d.seq;
    return { id: d.id, name: name, size: doc.size, from: opened.meta.from };
  }

  async function ack(serialHex, idHex) {
    var r = await withAk(serialHex, function (ak, serial) {
      return signed(ak, serial, 'DELETE', '/mailbox/' + serialHex + '/' + idHex);
    });
    if (r.status !== 204) { throw answerError(r, 'acknowledge ' + idHex); }
  }

  /* Every listed delivery, in seq order. */
  C.receiveAll = function (serialHex) {
    return S.lock('kmdc-recv-' + serialHex, async function () {
      var out = [], i, d;
      await C.listMailbox(serialHex, 0);
      for (i = 0; i < mailbox.list.length; i++) {
        d = mailbox.list[i];
        if (awaiting[d.id] !== undefined) { continue; }
        out.push(await receiveOne(serialHex, d));
      }
      return out;
    });
  };

  /* The user saw the files saved: erase their keys, then acknowledge. */
  C.confirm = function (serialHex) {
    return S.lock('kmdc-recv-' + serialHex, async function () {
      var ids = Object.keys(awaiting), done = [];
      await S.withCard(serialHex, function (c) {
        ids.forEach(function (idHex) {
          var seq = BigInt(awaiting[idHex]);
          c.keys = c.keys.filter(function (k) {
            if (k.seq === seq) { K.wipe(k.mk); return false; }
            return true;
          });
        });
        return { save: true };
      });
      for (var i = 0; i < ids.length; i++) {
        await ack(serialHex, ids[i]);
        delete awaiting[ids[i]];
        done.push(ids[i]);
      }
      return done;
    });
  };

  /* ---- the page ---------------------------------------------------------------- */

  var current = null;

  async function render() {
    var rec = await S.current(), info = $('card-info'), all, sent, ob, li, tr, cells;
    current = rec;
    info.textContent = '';
    $('card-none').hidden = !!rec;
    info.hidden = !rec;
    $('activate-form').hidden = !rec || rec.state === 'active';
    $('export-form').hidden = !rec;
    $('send-section').hidden = !rec || rec.state !== 'active';
    $('receive-section').hidden = !rec || rec.state !== 'active';
    if (rec) {
      [['Serial', rec.serial, 'card-serial'], ['Address', rec.address, 'card-address'],
       ['State', rec.state, 'card-state'], ['Next up counter', rec.upNext, 'card-up'],
       ['Next down counter', rec.downNext, 'card-down'], ['Datacenter', rec.url]].forEach(function (p) {
        var dd = el('dd', p[1]);
        if (p[2]) { dd.id = p[2]; }
        info.appendChild(el('dt', p[0]));
        info.appendChild(dd);
      });
      if (rec.url.replace(/\/+$/, '') !== location.origin + base) {
        info.appendChild(el('dt', 'Note'));
        info.appendChild(el('dd', 'the card names another datacenter URL; this page talks to ' +
                            location.origin + base));
      }
    }
    all = await S.cards();
    $('card-gone').textContent = '';
    all.filter(function (r) { return r.exported; }).forEach(function (r) {
      var p = el('p', r.serial + ' (' + r.address + ') was exported on ' +
                 new Date(r.exported).toISOString() + ' and is used by kmdc now. ', 'hint');
      if (r.sealed) {
        p.appendChild(button('Download its file again', function () {
          act('card-result', 'Exporting', function () {
            return S.exportAgain(r.serial, $('export-pass').value).then(function (out) {
              download(new Blob([out.file], { type: 'application/octet-stream' }),
                       r.address + '-' + r.serial + '.card');
              K.wipe(out.file);
              return 'Saved again; this page still does not use the card.';
            });
          });
        }));
        p.appendChild(button('Forget its keys here', function () {
          if (window.confirm('Forget the keys of the exported card? The file kmdc has is then ' +
                             'the only copy.')) {
            S.forget(r.serial).then(render);
          }
        }));
      }
      $('card-gone').appendChild(p);
    });
    ob = $('outbox-list');
    ob.textContent = '';
    (await S.all('outbox')).forEach(function (e) {
      li = el('li', e.name + ' to ' + e.rcpt.join(', ') + ' (' + size(e.size) + ', counter ' +
              parseInt(e.seq, 16) + ', ' + (e.state === 'ready' ? 'sealed, waiting for an answer'
                                            : 'sealing was interrupted') + ') ');
      li.setAttribute('data-key', e.key);
      li.setAttribute('data-state', e.state);
      if (e.state === 'ready') {
        li.appendChild(button('Send again', function () { act('seal-result', 'Sending', function () {
          return C.resume(e.key).then(function (r) { return 'message ' + r.message; });
        }); }));
      }
      li.appendChild(button('Discard', function () {
        if (window.confirm('Discard this envelope? If it already reached the datacenter it is ' +
                           'delivered anyway; otherwise it is lost.')) {
          C.discard(e.key).then(render);
        }
      }));
      ob.appendChild(li);
    });
    $('outbox-empty').hidden = ob.childNodes.length > 0;
    sent = $('sent-table');
    sent.textContent = '';
    (await S.all('sent')).filter(function (s) { return rec && s.serial === rec.serial; })
      .sort(function (a, b) { return a.sent - b.sent; }).forEach(function (s) {
        tr = el('tr');
        tr.setAttribute('data-message', s.message);
        cells = [s.message, s.name, s.rcpt.join(', '), ''];
        cells.forEach(function (t) { tr.appendChild(el('td', t)); });
        tr.lastChild.appendChild(button('Status', function () {
          act('sent-result', 'Asking', function () {
            return C.status(rec.serial, s.message).then(function (j) {
              return j.recipients.map(function (x) { return x.address + ': ' + x.state; }).join(', ');
            });
          });
        }));
        sent.appendChild(tr);
      });
    renderMailbox();
  }

  function renderMailbox() {
    var t = $('mailbox-table');
    t.textContent = '';
    mailbox.list.forEach(function (d) {
      var tr = el('tr');
      tr.setAttribute('data-id', d.id);
      [d.id, String(d.seq), size(d.size), new Date(d.created).toISOString(),
       awaiting[d.id] !== undefined ? 'saved, waiting for your confirmation' : 'waiting']
        .forEach(function (x) { tr.appendChild(el('td', x)); });
      t.appendChild(tr);
    });
    $('mailbox-count').textContent = mailbox.list.length + ' deliveries waiting';
    $('mailbox-count').setAttribute('data-count', String(mailbox.list.length));
    $('confirm-saved').hidden = Object.keys(awaiting).length === 0;
  }

  /* Run a user action: busy, then its result or its error, then render. */
  function act(out, busy, fn) {
    say(out, 'busy', busy + '\u2026');
    return Promise.resolve().then(fn).then(function (text) {
      say(out, 'ok', 'Done', text);
    }, function (e) {
      sayError(out, 'Failed', e);
    }).then(render);
  }

  $('import-form').addEventListener('submit', function (ev) {
    var f = $('card-file').files[0], pass = $('card-pass').value;
    ev.preventDefault();
    if (!f) { say('card-result', 'error', 'No file chosen', 'Choose the card file.'); return; }
    act('card-result', 'Importing', function () {
      return C.importFile(f, pass).then(function (r) {
        $('card-pass').value = '';
        $('card-file').value = '';
        return 'Card ' + r.rec.serial + ' (' + r.rec.address + ') now lives in this browser' +
          (r.again ? ', handed back from kmdc' : '') + '. Do not use the file with kmdc any ' +
          'more: delete it. To move the card back to kmdc, export it from here.';
      });
    });
  });
  $('activate-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    act('card-result', 'Activating', function () {
      return C.activate(current.serial, $('access-code').value).then(function () {
        $('access-code').value = '';
        return 'The card is active.';
      });
    });
  });
  $('export-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    if (!window.confirm('Export the card and hand it over to kmdc? This page will not use it ' +
                        'again.')) { return; }
    act('card-result', 'Exporting', function () {
      return C.exportCard(current.serial, $('export-pass').value).then(function (rec) {
        $('export-pass').value = '';
        return 'Saved as ' + rec.address + '-' + rec.serial + '.card. kmdc owns the card now ' +
          '(chmod 600 the file); this page refuses to use it.';
      });
    });
  });
  $('seal-form').addEventListener('submit', function (ev) {
    var files = Array.prototype.slice.call($('seal-files').files), rcpt = [], bad = [];
    ev.preventDefault();
    $('seal-to').value.split(/[\s,;]+/).filter(Boolean).forEach(function (t) {
      var a = R.address(t);
      if (a === null) { bad.push(t); } else if (rcpt.indexOf(a) < 0) { rcpt.push(a); }
    });
    if (!files.length || !rcpt.length || bad.length || rcpt.length > 32) {
      say('seal-result', 'error', 'Cannot send', bad.length ? 'Not an address: ' + bad.join(' ')
          : 'Choose at least one document and 1 to 32 recipients.');
      return;
    }
    act('seal-result', 'Sending', async function () {
      var lines = [], i, r;
      for (i = 0; i < files.length; i++) {
        r = await C.sendFile(current.serial, files[i], rcpt);
        lines.push(files[i].name + ': message ' + r.message + ', ' + r.deliveries +
                   ' deliveries' + (r.resumed ? ' (resumed from the outbox)' : '') +
                   (r.status === 200 ? ' (sent before: the first answer is repeated)' : ''));
      }
      $('seal-result').setAttribute('data-messages', lines.length);
      $('seal-files').value = '';
      return lines.join('\n');
    });
  });
  $('mailbox-refresh').addEventListener('click', function () {
    act('receive-result', 'Checking', function () {
      return C.listMailbox(current.serial, 0).then(function () { return mailbox.list.length + ' waiting'; });
    });
  });
  $('receive-all').addEventListener('click', function () {
    act('receive-result', 'Receiving', function () {
      return C.receiveAll(current.serial).then(function (list) {
        return list.length ? list.map(function (x) {
          return x.acked ? x.id + ': acknowledged again' : x.name + ' (' + size(x.size) + ', from ' +
            x.from + ') saved as a download';
        }).join('\n') + (Object.keys(awaiting).length
                         ? '\nCheck that the files were saved, then confirm below.' : '')
          : 'Nothing to receive.';
      });
    });
  });
  $('confirm-saved').addEventListener('click', function () {
    act('receive-result', 'Acknowledging', function () {
      return C.confirm(current.serial).then(function (ids) {
        return ids.length + ' deliveries acknowledged and removed from the mailbox.';
      }).then(function (t) { return C.listMailbox(current.serial, 0).then(function () { return t; }); });
    });
  });
  $('mailbox-watch').addEventListener('change', function () {
    mailbox.watching = $('mailbox-watch').checked;
    if (mailbox.watching) { watch(); }
  });

  /* Long-poll while the box is ticked: the list changes as deliveries come. */
  async function watch() {
    while (mailbox.watching && current && current.state === 'active') {
      try {
        if (await C.listMailbox(current.serial, 30)) { renderMailbox(); }
      } catch (e) {
        sayError('receive-result', 'Watching failed', e);
        await new Promise(function (res) { setTimeout(res, 5000); });
      }
    }
  }

  $('client').hidden = false;
  $('client-nojs').hidden = true;
  render().then(function () {
    document.body.setAttribute('data-client', 'ready');
    if (current && current.state === 'active') {
      return C.listMailbox(current.serial, 0).then(renderMailbox, function () {});
    }
  }, function (e) { sayError('card-result', 'This browser\'s storage failed', e); });
  C.render = render;
  window.KMDC_CLIENT = C;
}());
