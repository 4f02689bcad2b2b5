/* kmdc.js - the KMDC/1 protocol in the browser, on WebCrypto: bytes, the
 * primitives (HMAC-SHA-256, HKDF, AES-256-GCM, scrypt on PBKDF2 + Salsa20/8
 * as RFC 7914 describes), the card file layout (PROTOCOL.md section 9), the
 * chain step, envelopes (sealed and opened 64 KiB chunk by chunk from a
 * Blob), and signed requests.  No DOM and no storage here: ui.js uses it.
 * Exposes window.KMDC. */
(function () {
  'use strict';
  var subtle = window.crypto && window.crypto.subtle;
  var te = new TextEncoder();
  var K = {};
  var CHUNK = 65536;
  var PIECE = 64;         /* chunks read (4 MiB) and sealed or opened at once */
  var U63 = (1n << 63n) - 1n;

  function fail(code, message) {
    var e = new Error(message);
    e.code = code;
    return e;
  }
  K.fail = fail;

  /* ---- bytes ----------------------------------------------------------- */

  function hex(u8) {
    var s = '', i;
    for (i = 0; i < u8.length; i++) { s += (u8[i] < 16 ? '0' : '') + u8[i].toString(16); }
    return s;
  }
  function unhex(s) {
    var o, i;
    if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) { throw fail('arg', 'not hex'); }
    o = new Uint8Array(s.length / 2);
    for (i = 0; i < o.length; i++) { o[i] = parseInt(s.substr(2 * i, 2), 16); }
    return o;
  }
  function cat(list) {
    var n = 0, o, at = 0;
    list.forEach(function (a) { n += a.length; });
    o = new Uint8Array(n);
    list.forEach(function (a) { o.set(a, at); at += a.length; });
    return o;
  }
  function u8(n) { return new Uint8Array([n]); }
  function u16(n) { var o = new Uint8Array(2); new DataView(o.buffer).setUint16(0, n); return o; }
  function u32(n) { var o = new Uint8Array(4); new DataView(o.buffer).setUint32(0, n); return o; }
  function u64(v) { var o = new Uint8Array(8); new DataView(o.buffer).setBigUint64(0, BigInt(v)); return o; }
  function getU16(b, at) { return new DataView(b.buffer, b.byteOffset).getUint16(at); }
  function getU32(b, at) { return new DataView(b.buffer, b.byteOffset).getUint32(at); }
  function getU64(b, at) { return new DataView(b.buffer, b.byteOffset).getBigUint64(at); }
  function hex16(v) { return BigInt(v).toString(16).padStart(16, '0'); }
  function random(n) { return window.crypto.getRandomValues(new Uint8Array(n)); }
  function wipe() {
    Array.prototype.forEach.call(arguments, function (a) { if (a && a.fill) { a.fill(0); } });
  }
  function ctEqual(a, b) {
    var d = 0, i;
    if (a.length !== b.length) { return false; }
    for (i = 0; i < a.length; i++) { d |= a[i] ^ b[i]; }
    return d === 0;
  }
  K.hex = hex; K.unhex = unhex; K.cat = cat; K.u64 = u64; K.getU64 = getU64;
  K.hex16 = hex16; K.random = random; K.wipe = wipe; K.utf8 = function (s) { return te.encode(s); };

  /* ---- primitives ------------------------------------------------------ */

  /* An HMAC key from raw bytes.  HMAC pads a short key with zeros, so the
   * empty key (which WebCrypto refuses) is the one-byte key 0x00. */
  function hmacKey(raw, usages) {
    return subtle.importKey('raw', raw.length ? raw : new Uint8Array(1),
                            { name: 'HMAC', hash: 'SHA-256' }, false, usages || ['sign']);
  }
  async function hmac(key, data) {
    if (!(key instanceof CryptoKey)) { key = await hmacKey(key); }
    return new Uint8Array(await subtle.sign('HMAC', key, data));
  }
  async function sha256(data) { return new Uint8Array(await subtle.digest('SHA-256', data)); }
  function hkdfParams(salt, info) {
    return { name: 'HKDF', hash: 'SHA-256', salt: salt, info: te.encode(info) };
  }
  async function hkdf(salt, ikm, info, len) {
    var k = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
    return new Uint8Array(await subtle.deriveBits(hkdfParams(salt, info), k, len * 8));
  }
  /* HKDF straight into a non-extractable AES-256-GCM key. */
  async function hkdfGcm(salt, ikm, info) {
    var k = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveKey']);
    return subtle.deriveKey(hkdfParams(salt, info), k, { name: 'AES-GCM', length: 256 },
                            false, ['encrypt', 'decrypt']);
  }
  function gcmKey(raw) {
    return subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt']);
  }
  function gcmParams(iv, aad) {
    var p = { name: 'AES-GCM', iv: iv, tagLength: 128 };
    if (aad && aad.length) { p.additionalData = aad; }
    return p;
  }
  async function gcmSeal(key, iv, pt, aad) {
    if (!(key instanceof CryptoKey)) { key = await gcmKey(key); }
    return new Uint8Array(await subtle.encrypt(gcmParams(iv, aad), key, pt));
  }
  /* Throws fail('auth') when the tag does not verify. */
  async function gcmOpen(key, iv, ct, aad) {
    if (!(key instanceof CryptoKey)) { key = await gcmKey(key); }
    try {
      return new Uint8Array(await subtle.decrypt(gcmParams(iv, aad), key, ct));
    } catch (e) {
      throw fail('auth', 'authentication failed');
    }
  }
  async function pbkdf2(pass, salt, bytes) {
    var k = await subtle.importKey('raw', pass, 'PBKDF2', false, ['deriveBits']);
    return new Uint8Array(await subtle.deriveBits(
      { name: 'PBKDF2', hash: 'SHA-256', salt: salt, iterations: 1 }, k, bytes * 8));
  }
  K.hmac = hmac; K.sha256 = sha256; K.hkdf = hkdf; K.gcmSeal = gcmSeal; K.gcmOpen = gcmOpen;
  K.pbkdf2 = async function (pass, salt, bytes) {
    /* an empty password is the one-byte 0x00 for HMAC's sake (see hmacKey) */
    return pbkdf2(pass.length ? pass : new Uint8Array(1), salt, bytes);
  };

  /* ---- scrypt (RFC 7914) ------------------------------------------------- */

  /* Salsa20/8 core over the 16 words at B[bo..], XORed with X first:
   * X = Salsa20/8(X xor B[bo..]). */
  function salsaXor(X, B, bo) {
    var x0 = (X[0] ^= B[bo]), x1 = (X[1] ^= B[bo + 1]), x2 = (X[2] ^= B[bo + 2]),
      x3 = (X[3] ^= B[bo + 3]), x4 = (X[4] ^= B[bo + 4]), x5 = (X[5] ^= B[bo + 5]),
      x6 = (X[6] ^= B[bo + 6]), x7 = (X[7] ^= B[bo + 7]), x8 = (X[8] ^= B[bo + 8]),
      x9 = (X[9] ^= B[bo + 9]), x10 = (X[10] ^= B[bo + 10]), x11 = (X[11] ^= B[bo + 11]),
      x12 = (X[12] ^= B[bo + 12]), x13 = (X[13] ^= B[bo + 13]), x14 = (X[14] ^= B[bo + 14]),
      x15 = (X[15] ^= B[bo + 15]), u, i;
    for (i = 0; i < 8; i += 2) {
      u = (x0 + x12) | 0; x4 ^= (u << 7) | (u >>> 25);
      u = (x4 + x0) | 0; x8 ^= (u << 9) | (u >>> 23);
      u = (x8 + x4) | 0; x12 ^= (u << 13) | (u >>> 19);
      u = (x12 + x8) | 0; x0 ^= (u << 18) | (u >>> 14);
      u = (x5 + x1) | 0; x9 ^= (u << 7) | (u >>> 25);
      u = (x9 + x5) | 0; x13 ^= (u << 9) | (u >>> 23);
      u = (x13 + x9) | 0; x1 ^= (u << 13) | (u >>> 19);
      u = (x1 + x13) | 0; x5 ^= (u << 18) | (u >>> 14);
      u = (x10 + x6) | 0; x14 ^= (u << 7) | (u >>> 25);
      u = (x14 + x10) | 0; x2 ^= (u << 9) | (u >>> 23);
      u = (x2 + x14) | 0; x6 ^= (u << 13) | (u >>> 19);
      u = (x6 + x2) | 0; x10 ^= (u << 18) | (u >>> 14);
      u = (x15 + x11) | 0; x3 ^= (u << 7) | (u >>> 25);
      u = (x3 + x15) | 0; x7 ^= (u << 9) | (u >>> 23);
      u = (x7 + x3) | 0; x11 ^= (u << 13) | (u >>> 19);
      u = (x11 + x7) | 0; x15 ^= (u << 18) | (u >>> 14);
      u = (x0 + x3) | 0; x1 ^= (u << 7) | (u >>> 25);
      u = (x1 + x0) | 0; x2 ^= (u << 9) | (u >>> 23);
      u = (x2 + x1) | 0; x3 ^= (u << 13) | (u >>> 19);
      u = (x3 + x2) | 0; x0 ^= (u << 18) | (u >>> 14);
      u = (x5 + x4) | 0; x6 ^= (u << 7) | (u >>> 25);
      u = (x6 + x5) | 0; x7 ^= (u << 9) | (u >>> 23);
      u = (x7 + x6) | 0; x4 ^= (u << 13) | (u >>> 19);
      u = (x4 + x7) | 0; x5 ^= (u << 18) | (u >>> 14);
      u = (x10 + x9) | 0; x11 ^= (u << 7) | (u >>> 25);
      u = (x11 + x10) | 0; x8 ^= (u << 9) | (u >>> 23);
      u = (x8 + x11) | 0; x9 ^= (u << 13) | (u >>> 19);
      u = (x9 + x8) | 0; x10 ^= (u << 18) | (u >>> 14);
      u = (x15 + x14) | 0; x12 ^= (u << 7) | (u >>> 25);
      u = (x12 + x15) | 0; x13 ^= (u << 9) | (u >>> 23);
      u = (x13 + x12) | 0; x14 ^= (u << 13) | (u >>> 19);
      u = (x14 + x13) | 0; x15 ^= (u << 18) | (u >>> 14);
    }
    X[0] += x0; X[1] += x1; X[2] += x2; X[3] += x3; X[4] += x4; X[5] += x5;
    X[6] += x6; X[7] += x7; X[8] += x8; X[9] += x9; X[10] += x10; X[11] += x11;
    X[12] += x12; X[13] += x13; X[14] += x14; X[15] += x15;
  }

  /* BlockMix_{Salsa20/8, r}: B (32r words at bi) -> Y (at yi), even blocks
   * first, then odd ones. */
  function blockMix(B, bi, Y, yi, X, r) {
    var i;
    X.set(B.subarray(bi + (2 * r - 1) * 16, bi + 2 * r * 16));
    for (i = 0; i < 2 * r; i++) {
      salsaXor(X, B, bi + i * 16);
      Y.set(X, yi + ((i & 1) * r + (i >> 1)) * 16);
    }
  }

  /* ROMix on the 128r bytes of b (little-endian words), in place. */
  function roMix(b, N, r) {
    var w = 32 * r, V = new Uint32Array(w * N), X = new Uint32Array(w),
      Y = new Uint32Array(w), T = new Uint32Array(16), dv = new DataView(b.buffer, b.byteOffset),
      i, j, k;
    for (k = 0; k < w; k++) { X[k] = dv.getUint32(k * 4, true); }
    for (i = 0; i < N; i++) {
      V.set(X, i * w);
      blockMix(X, 0, Y, 0, T, r);
      X.set(Y);
    }
    for (i = 0; i < N; i++) {
      j = X[(2 * r - 1) * 16] & (N - 1);
      for (k = 0; k < w; k++) { X[k] ^= V[j * w + k]; }
      blockMix(X, 0, Y, 0, T, r);
      X.set(Y);
    }
    for (k = 0; k < w; k++) { dv.setUint32(k * 4, X[k], true); }
    V.fill(0); X.fill(0); Y.fill(0); T.fill(0);
  }

  /* scrypt(P, S, N, r, p, dkLen) with the parameter bounds of the card
   * layout checked by the caller. */
  K.scrypt = async function (pass, salt, N, r, p, dkLen) {
    var B = await K.pbkdf2(pass, salt, p * 128 * r), i, out;
    for (i = 0; i < p; i++) { roMix(B.subarray(i * 128 * r, (i + 1) * 128 * r), N, r); }
    out = await K.pbkdf2(pass, B, dkLen);
    wipe(B);
    return out;
  };

  /* ---- chains, activation, request signatures --------------------------- */

  /* One chain step: {mk: MK_n, next: CK_{n+1}} from CK_n (raw bytes). */
  K.chainStep = async function (ck) {
    var k = await hmacKey(ck);
    return { mk: await hmac(k, u8(1)), next: await hmac(k, u8(2)) };
  };

  K.rotate = function (r, key, name) { return hkdf(r, key, 'KMDC/1 activate ' + name, 32); };

  /* The Authorization header value (PROTOCOL.md section 5); ts and nonce
   * only for the vectors. */
  K.authHeader = async function (ak, serial, method, target, body, ts, nonce) {
    var bodyHash = hex(await sha256(body || new Uint8Array(0))), sig;
    if (ts === undefined) { ts = Math.floor(Date.now() / 1000) + K.clockSkew; }
    if (nonce === undefined) { nonce = hex(random(16)); }
    sig = hex(await hmac(ak, te.encode('KMDC/1 request\n' + method + '\n' + target + '\n' +
                                        ts + '\n' + nonce + '\n' + bodyHash)));
    return 'KMDC1-HMAC-SHA256 serial=' + hex16(serial) + ',ts=' + ts + ',nonce=' + nonce +
      ',sig=' + sig;
  };
  K.clockSkew = 0;

  /* ---- the card file (PROTOCOL.md section 9) ---------------------------- */

  var CARD_MAGIC = te.encode('KMDCCARD');
  var ADDR_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

  function ascii(b) { return String.fromCharCode.apply(null, b); }

  /* The plaintext body -> card object; strict, like lib/kmdc_card.c. */
  function parseBody(b) {
    var at = 0, c = {}, n, i, seq, prev = -1n, id, ids = {};
    function need(k) {
      if (b.length - at < k) { throw fail('truncated', 'the card is cut short'); }
      var v = b.subarray(at, at + k);
      at += k;
      return v;
    }
    function bad(what) { throw fail('format', 'the card is malformed: ' + what); }
    c.serial = getU64(need(8), 0);
    if (c.serial < 1n || c.serial > U63) { bad('serial'); }
    c.state = need(1)[0];
    c.flags = need(1)[0];
    if (c.state !== 1 && c.state !== 2) { bad('state'); }
    if ((c.flags & ~1) || (c.flags && c.state !== 1)) { bad('flags'); }
    n = getU16(need(2), 0);
    c.address = ascii(need(n));
    if (!ADDR_RE.test(c.address)) { bad('address'); }
    n = getU16(need(2), 0);
    c.url = ascii(need(n));
    if (n < 1 || n > 2048 || !/^[!-~]+$/.test(c.url)) { bad('url'); }
    c.upCk = need(32).slice();
    c.upNext = getU64(need(8), 0);
    c.downCk = need(32).slice();
    c.downNext = getU64(need(8), 0);
    if (c.upNext > U63 || c.downNext > U63) { bad('counter'); }
    c.ak = need(32).slice();
    c.r = c.flags & 1 ? need(32).slice() : null;
    n = getU16(need(2), 0);
    if (n > 1024) { bad('too many keys'); }
    c.keys = [];
    for (i = 0; i < n; i++) {
      seq = getU64(need(8), 0);
      if (seq <= prev || seq >= c.downNext || c.downNext - seq > 1024n) { bad('stored key'); }
      prev = seq;
      c.keys.push({ seq: seq, mk: need(32).slice() });
    }
    n = getU16(need(2), 0);
    if (n > 4096) { bad('too many deliveries'); }
    c.deliveries = [];
    for (i = 0; i < n; i++) {
      id = getU64(need(8), 0);
      var len = getU16(need(2), 0), name = need(len).slice();
      if (len < 1 || len > 1024 || name.indexOf(0) >= 0 || ids[id]) { bad('delivery record'); }
      ids[id] = true;
      c.deliveries.push({ id: id, name: name });
    }
    if (at !== b.length) { throw fail('trailing', 'bytes after the last record'); }
    return c;
  }

  function serializeBody(c) {
    var parts = [u64(c.serial), u8(c.state), u8(c.r ? 1 : 0), u16(c.address.length),
                 te.encode(c.address), u16(c.url.length), te.encode(c.url), c.upCk,
                 u64(c.upNext), c.downCk, u64(c.downNext), c.ak];
    if (c.r) { parts.push(c.r); }
    parts.push(u16(c.keys.length));
    c.keys.forEach(function (k) { parts.push(u64(k.seq), k.mk); });
    parts.push(u16(c.deliveries.length));
    c.deliveries.forEach(function (d) { parts.push(u64(d.id), u16(d.name.length), d.name); });
    return cat(parts);
  }
  K.parseBody = parseBody;
  K.serializeBody = serializeBody;

  function scryptBoundsOk(log2n, r, p) {
    var N = Math.pow(2, log2n);
    return log2n >= 1 && log2n <= 20 && r >= 1 && r <= 32 && p >= 1 && p <= 16 &&
      r * N <= 1048576 && p * r * N <= 4194304;
  }

  /* A card file (Uint8Array) -> {card, protection, log2n, r, p}.  pass: the
   * passphrase as typed ('' = none).  Errors carry .code: corrupt, format,
   * passphrase (needed / wrong), truncated, trailing. */
  K.parseCard = async function (file, pass) {
    var len = file.length, head, body, prot, bodyLen, key, i;
    if (len < 80 || !ctEqual(await sha256(file.subarray(0, len - 32)), file.subarray(len - 32))) {
      throw fail('corrupt', 'the card file is damaged (its checksum does not match)');
    }
    head = file.subarray(0, 48);
    bodyLen = getU32(head, 12);
    if (!ctEqual(head.subarray(0, 8), CARD_MAGIC) || head[8] !== 1 || head[10] || head[11] ||
        bodyLen !== len - 80 || bodyLen > 8388608) {
      throw fail('format', 'not a version 1 card file');
    }
    prot = head[9];
    body = file.subarray(48, len - 32);
    if (prot === 0) {
      for (i = 16; i < 48; i++) {
        if (head[i]) { throw fail('format', 'not a version 1 card file'); }
      }
      return { card: parseBody(body), protection: 0 };
    }
    if (prot !== 1 || head[19] !== 0 || !scryptBoundsOk(head[16], head[17], head[18])) {
      throw fail('format', 'not a version 1 card file (protection or scrypt parameters)');
    }
    if (!pass) { throw fail('passphrase', 'the card is protected by a passphrase: one is needed'); }
    key = await K.scrypt(te.encode(pass), head.subarray(20, 36), Math.pow(2, head[16]),
                         head[17], head[18], 32);
    try {
      body = await gcmOpen(key, head.subarray(36, 48), body, head);
    } catch (e) {
      throw fail('passphrase', 'wrong passphrase');
    } finally {
      wipe(key);
    }
    try {
      return { card: parseBody(body), protection: 1, log2n: head[16], r: head[17], p: head[18] };
    } finally {
      wipe(body);
    }
  };

  /* card -> file bytes; pass '' for a plain card.  opts (tests): log2n, r,
   * p, salt, iv. */
  K.serializeCard = async function (card, pass, opts) {
    var o = opts || {}, body = serializeBody(card), head = new Uint8Array(48), out, key, all;
    head.set(CARD_MAGIC, 0);
    head[8] = 1;
    if (pass) {
      var log2n = o.log2n || 15, r = o.r || 8, p = o.p || 1;
      var salt = o.salt || random(16), iv = o.iv || random(12);
      head[9] = 1;
      new DataView(head.buffer).setUint32(12, body.length + 16);
      head[16] = log2n; head[17] = r; head[18] = p;
      head.set(salt, 20);
      head.set(iv, 36);
      key = await K.scrypt(te.encode(pass), salt, Math.pow(2, log2n), r, p, 32);
      out = await gcmSeal(key, iv, body, head);
      wipe(key, body);
      body = out;
    } else {
      new DataView(head.buffer).setUint32(12, body.length);
    }
    all = cat([head, body]);
    out = cat([all, await sha256(all)]);
    wipe(all, body);
    return out;
  };

  K.cardCopy = function (c) {
    return {
      serial: c.serial, state: c.state, flags: c.flags, address: c.address, url: c.url,
      upCk: c.upCk.slice(), upNext: c.upNext, downCk: c.downCk.slice(), downNext: c.downNext,
      ak: c.ak.slice(), r: c.r ? c.r.slice() : null,
      keys: c.keys.map(function (k) { return { seq: k.seq, mk: k.mk.slice() }; }),
      deliveries: c.deliveries.map(function (d) { return { id: d.id, name: d.name.slice() }; })
    };
  };
  K.cardWipe = function (c) {
    if (!c) { return; }
    wipe(c.upCk, c.downCk, c.ak, c.r);
    c.keys.forEach(function (k) { wipe(k.mk); });
  };

  /* ---- envelopes (PROTOCOL.md section 3) -------------------------------- */

  var T = { RCPT: 1, NAME: 2, TYPE: 3, SIZE: 4, SENT: 5, FROM: 0x10, FROMSERIAL: 0x11,
            MSGID: 0x12, RCVD: 0x13 };

  function tlv(type, value) { return cat([u8(type), u16(value.length), value]); }

  /* The up metadata, sorted by type (RCPT in the given order). */
  K.encodeUpMeta = function (m) {
    var parts = m.rcpt.map(function (a) { return tlv(T.RCPT, te.encode(a)); });
    if (m.name !== undefined) { parts.push(tlv(T.NAME, m.name)); }
    if (m.type !== undefined) { parts.push(tlv(T.TYPE, te.encode(m.type))); }
    parts.push(tlv(T.SIZE, u64(m.size)), tlv(T.SENT, u64(m.sent)));
    return cat(parts);
  };

  /* Down metadata -> {name (bytes) , type, size, sent, from, fromserial,
   * msgid, rcvd} (BigInt numbers), strictly. */
  K.decodeDownMeta = function (b) {
    var at = 0, last = -1, m = {}, t, l, v, R = window.KMDC_RULES;
    function bad(why) { throw fail('protocol', 'the metadata is malformed: ' + why); }
    function num() { if (l !== 8) { bad('a number is not 8 bytes'); } return getU64(v, 0); }
    while (at < b.length) {
      if (b.length - at < 3) { bad('cut short'); }
      t = b[at]; l = getU16(b, at + 1); at += 3;
      if (l > b.length - at) { bad('cut short'); }
      v = b.subarray(at, at + l); at += l;
      if (t < last || t === last) { bad('unsorted or repeated entry'); }
      last = t;
      if (t === T.NAME) {
        if (!R.nameValid(v)) { throw fail('bad_name', 'the file name breaks the NAME rules'); }
        m.name = v.slice();
      } else if (t === T.TYPE) {
        m.type = ascii(v);
        if (!R.typeValid(m.type)) { bad('TYPE'); }
      } else if (t === T.SIZE) {
        m.size = num();
        if (m.size > (1n << 40n)) { bad('SIZE'); }
      } else if (t === T.SENT) { m.sent = num(); }
      else if (t === T.FROM) {
        m.from = ascii(v);
        if (!ADDR_RE.test(m.from)) { bad('FROM'); }
      } else if (t === T.FROMSERIAL) {
        m.fromserial = num();
        if (m.fromserial < 1n || m.fromserial > U63) { bad('FROMSERIAL'); }
      } else if (t === T.MSGID) {
        m.msgid = num();
        if (m.msgid < 1n || m.msgid > U63) { bad('MSGID'); }
      } else if (t === T.RCVD) { m.rcvd = num(); }
      else if (t < 0x80) { bad('unknown or misplaced type ' + t); }
    }
    ['size', 'sent', 'from', 'fromserial', 'msgid', 'rcvd'].forEach(function (f) {
      if (m[f] === undefined) { bad('no ' + f.toUpperCase()); }
    });
    return m;
  };

  function header(direction, serial, seq, salt) {
    return cat([te.encode('KMDC'), u8(1), u8(direction), u16(0), u64(serial), u64(seq), salt]);
  }
  function chunkIv(i, last) {
    var iv = new Uint8Array(12);
    new DataView(iv.buffer).setBigUint64(3, BigInt(i));
    iv[11] = last ? 1 : 0;
    return iv;
  }
  function chunkCount(size) { return size === 0 ? 1 : Math.ceil(size / CHUNK); }
  K.chunkCount = chunkCount;

  /* Seal blob (the document) as an up envelope for seq under mk.
   * o: {serial, seq, mk, meta {rcpt, name, type, sent}, salt?, dek?,
   * progress(done, total)?}.  Reads the document 1 MiB at a time and keeps
   * only sealed bytes, as Blobs of at most 4 MiB; returns a Blob. */
  K.seal = async function (blob, o) {
    var size = blob.size, salt = o.salt || random(16), dek = o.dek || random(32), head,
      meta, kbk, keyblock, pk, n = chunkCount(size), parts = [], i = 0, at, buf, off, end;
    meta = K.encodeUpMeta({ rcpt: o.meta.rcpt, name: o.meta.name, type: o.meta.type,
                            size: size, sent: o.meta.sent });
    head = header(1, o.serial, o.seq, salt);
    kbk = await hkdfGcm(salt, o.mk, 'KMDC/1 keyblock');
    var kbPlain = cat([dek, meta]);
    keyblock = await gcmSeal(kbk, new Uint8Array(12), kbPlain, head);
    wipe(kbPlain);
    pk = await hkdfGcm(new Uint8Array(0), dek, 'KMDC/1 payload');
    wipe(dek);
    parts.push(new Blob([head, u32(keyblock.length), keyblock]));
    /* a piece of PIECE chunks is read while the one before is sealed; the
     * chunks of a piece are sealed side by side (WebCrypto works off the
     * main thread) and kept in order */
    function read(at) {
      var end = Math.min(size, at + PIECE * CHUNK);
      return blob.slice(at, end).arrayBuffer().then(function (ab) {
        if (ab.byteLength !== end - at) { throw fail('changed', 'the document changed while it was read'); }
        return new Uint8Array(ab);
      });
    }
    var next = read(0), jobs;
    for (at = 0; i < n; at += buf.length) {
      buf = await next;
      if (at + buf.length < size) { next = read(at + buf.length); }
      jobs = [];
      for (off = 0; off < buf.length || (size === 0 && i === 0); off = end) {
        end = Math.min(buf.length, off + CHUNK);
        jobs.push(gcmSeal(pk, chunkIv(i, i === n - 1), buf.subarray(off, end)));
        i++;
        if (size === 0) { break; }
      }
      jobs = await Promise.all(jobs);
      wipe(buf);
      parts.push(new Blob(jobs));
      if (o.progress) { o.progress(Math.min(size, at + buf.length), size); }
    }
    if (blob.size !== size) { throw fail('changed', 'the document changed while it was read'); }
    return new Blob(parts, { type: 'application/vnd.kmdc.envelope' });
  };

  /* The prefix of a down envelope: {seq, head, keyblock, kbLen}, after the
   * framing checks that need no key. */
  K.openHead = async function (blob, serial) {
    var pre = new Uint8Array(await blob.slice(0, 44).arrayBuffer()), kbLen, head;
    function bad(why) { throw fail('protocol', 'not a down envelope for this card: ' + why); }
    if (pre.length < 44) { bad('too short'); }
    head = pre.slice(0, 40);
    if (ascii(head.subarray(0, 4)) !== 'KMDC' || head[4] !== 1) { bad('magic or version'); }
    if (head[5] !== 2 || head[6] || head[7]) { bad('direction or flags'); }
    if (getU64(head, 8) !== BigInt(serial)) { bad('another serial'); }
    kbLen = getU32(pre, 40);
    if (kbLen < 59 || kbLen > 16432) { bad('kb_len'); }
    var kb = new Uint8Array(await blob.slice(44, 44 + kbLen).arrayBuffer());
    if (kb.length !== kbLen) { bad('cut short'); }
    return { seq: getU64(head, 16), head: head, kbLen: kbLen, keyblock: kb };
  };

  /* Open the keyblock with MK_seq: {dek, meta}; throws code 'auth'. */
  K.openKeyblock = async function (h, mk) {
    var kbk = await hkdfGcm(h.head.subarray(24, 40), mk, 'KMDC/1 keyblock');
    var pt = await gcmOpen(kbk, new Uint8Array(12), h.keyblock, h.head);
    try {
      return { dek: pt.slice(0, 32), meta: K.decodeDownMeta(pt.subarray(32)) };
    } finally {
      wipe(pt);
    }
  };

  /* The payload -> a Blob of the document; every tag verified before the
   * Blob is returned (nothing of a chunk is kept before its tag verified). */
  K.openPayload = async function (blob, h, dek, size, progress) {
    var n = chunkCount(size), at = 44 + h.kbLen, out = [], i, want, pk;
    if (blob.size !== at + size + 16 * n) {
      throw fail('protocol', blob.size < at + size + 16 * n ? 'the envelope is cut short'
                 : 'bytes after the last chunk');
    }
    pk = await hkdfGcm(new Uint8Array(0), dek, 'KMDC/1 payload');
    /* PIECE chunks at a time, read ahead and opened side by side; the
     * document Blob exists only once every tag verified */
    function span(first) {
      var last = Math.min(n, first + PIECE), from = at + first * (CHUNK + 16),
        to = last === n ? blob.size : at + last * (CHUNK + 16);
      return blob.slice(from, to).arrayBuffer().then(function (ab) { return new Uint8Array(ab); });
    }
    var next = span(0), buf, jobs, off, k;
    for (i = 0; i < n; i += PIECE) {
      buf = await next;
      if (i + PIECE < n) { next = span(i + PIECE); }
      jobs = [];
      for (k = i, off = 0; k < Math.min(n, i + PIECE); k++, off += want) {
        want = Math.min(CHUNK, size - k * CHUNK) + 16;
        jobs.push(gcmOpen(pk, chunkIv(k, k === n - 1), buf.subarray(off, off + want)));
      }
      out.push(new Blob(await Promise.all(jobs)));
      if (progress) { progress(Math.min(size, (i + PIECE) * CHUNK), size); }
    }
    return new Blob(out);
  };

  K.T = T;
  window.KMDC = K;
}());
