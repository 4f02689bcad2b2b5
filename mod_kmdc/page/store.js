/* store.js - the browser's card, outbox and sent list in IndexedDB, and the
 * card's counter rules (PROTOCOL.md section 9, "Counters on the card").
 *
 * The card record holds the card body (the file layout's plaintext body)
 * sealed with AES-256-GCM under a wrapping key that is a non-extractable
 * CryptoKey kept in the same database: the raw chain keys, AK and stored
 * message keys never rest in IndexedDB in the clear, and script can use the
 * wrapping key but never read it.  (The chain keys themselves cannot be
 * non-extractable CryptoKeys: each step's HMAC output is the next key, and an
 * export must write them out.)  Every read-modify-write of a card runs under
 * the Web Lock "kmdc-card-SERIAL" (CARD.lock); a sender holds
 * "kmdc-send-SERIAL" and a receiver "kmdc-recv-SERIAL" (CARD.send.lock,
 * CARD.recv.lock), across tabs.  Exposes window.KMDC_STORE. */
(function () {
  'use strict';
  var K = window.KMDC;
  var S = {};
  var dbp = null;

  function req(r) {
    return new Promise(function (resolve, reject) {
      r.addEventListener('success', function () { resolve(r.result); });
      r.addEventListener('error', function () { reject(r.error); });
    });
  }

  function open() {
    if (dbp) { return dbp; }
    dbp = new Promise(function (resolve, reject) {
      var r = window.indexedDB.open('kmdc', 1);
      r.addEventListener('upgradeneeded', function () {
        var db = r.result;
        db.createObjectStore('meta');
        db.createObjectStore('cards', { keyPath: 'serial' });
        db.createObjectStore('outbox', { keyPath: 'key' });
        db.createObjectStore('sent', { keyPath: 'message' });
      });
      r.addEventListener('success', function () { resolve(r.result); });
      r.addEventListener('error', function () { reject(r.error); });
    });
    return dbp;
  }

  /* Run fn(stores...) in one transaction; resolves with fn's result once
   * the transaction committed. */
  S.tx = async function (names, mode, fn) {
    var db = await open();
    return new Promise(function (resolve, reject) {
      var t = db.transaction(names, mode), out;
      t.addEventListener('complete', function () { resolve(out); });
      t.addEventListener('abort', function () { reject(t.error || new Error('aborted')); });
      t.addEventListener('error', function () { reject(t.error); });
      Promise.resolve(fn.apply(null, names.map(function (n) { return t.objectStore(n); })))
        .then(function (v) { out = v; }, function (e) { reject(e); t.abort(); });
    });
  };
  S.get = function (store, key) {
    return S.tx([store], 'readonly', function (s) { return req(s.get(key)); });
  };
  S.all = function (store) {
    return S.tx([store], 'readonly', function (s) { return req(s.getAll()); });
  };

  /* The wrapping key: AES-256-GCM, non-extractable, made once. */
  var wrapKey = null;
  async function getWrapKey() {
    var k;
    if (wrapKey) { return wrapKey; }
    k = await S.get('meta', 'wrapkey');
    if (!k) {
      k = await window.crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false,
                                                 ['encrypt', 'decrypt']);
      await S.tx(['meta'], 'readwrite', function (m) { m.put(k, 'wrapkey'); });
      k = await S.get('meta', 'wrapkey');
    }
    wrapKey = k;
    return k;
  }
  S.wrapKey = getWrapKey;

  function aad(serialHex) { return K.utf8('KMDC/1 browser card ' + serialHex); }

  /* The record's public part, shown without unsealing. */
  function describe(rec, c) {
    rec.address = c.address;
    rec.url = c.url;
    rec.state = rec.exported ? 'exported' : c.state === 2 ? 'active'
      : c.r ? 'activation pending' : 'issued';
    rec.upNext = c.upNext.toString();
    rec.downNext = c.downNext.toString();
    return rec;
  }

  async function sealRecord(rec, c) {
    var body = K.serializeBody(c), iv = K.random(12);
    rec.iv = iv;
    rec.sealed = await window.crypto.subtle.encrypt(
      { name: 'AES-GCM', iv: iv, additionalData: aad(rec.serial) }, await getWrapKey(), body);
    K.wipe(body);
    return describe(rec, c);
  }

  async function unseal(rec) {
    var body;
    if (!rec || !rec.sealed) { throw K.fail('gone', 'this browser holds no keys for that card'); }
    try {
      body = new Uint8Array(await window.crypto.subtle.decrypt(
        { name: 'AES-GCM', iv: rec.iv, additionalData: aad(rec.serial) }, await getWrapKey(),
        rec.sealed));
    } catch (e) {
      throw K.fail('corrupt', 'the card stored in this browser does not decrypt');
    }
    try {
      return K.parseBody(body);
    } finally {
      K.wipe(body);
    }
  }

  /* The card in use: the newest record not handed over (or null), and every
   * record (handed-over ones are kept as tombstones). */
  S.cards = async function () { return S.all('cards'); };
  S.current = async function () {
    var all = await S.all('cards'), live = all.filter(function (r) { return !r.exported; });
    live.sort(function (a, b) { return b.imported - a.imported; });
    return live.length ? live[0] : null;
  };

  function lock(name, fn) {
    if (navigator.locks) { return navigator.locks.request(name, fn); }
    return fn();
  }
  S.lock = lock;

  /* Read-modify-write of a card under its lock: fn(card, rec, t) may change
   * card and returns {save: bool, ops(stores...)?, value}; the card and the
   * ops commit in one transaction. */
  S.withCard = function (serialHex, fn) {
    return lock('kmdc-card-' + serialHex, async function () {
      var rec = await S.get('cards', serialHex), card, r, newRec;
      if (!rec) { throw K.fail('gone', 'no such card in this browser'); }
      if (rec.exported) {
        throw K.fail('exported', 'this card was exported and handed over to kmdc: this page no ' +
                     'longer uses it');
      }
      card = await unseal(rec);
      try {
        r = (await fn(card, rec)) || {};
        if (r.save || r.ops) {
          newRec = r.save ? await sealRecord(Object.assign({}, rec), card) : rec;
          await S.tx(['cards', 'outbox', 'sent'], 'readwrite', function (cs, ob, sn) {
            if (r.save) { cs.put(newRec); }
            if (r.ops) { r.ops(ob, sn, cs); }
          });
        }
        return r.value;
      } finally {
        K.cardWipe(card);
      }
    });
  };

  /* ---- import and export -------------------------------------------------- */

  /* Take a parsed card in.  Refuses a card this browser uses already, and a
   * copy older than the one it handed over (its counters behind). */
  S.importCard = function (card) {
    var serialHex = K.hex16(card.serial);
    return lock('kmdc-card-' + serialHex, async function () {
      var old = await S.get('cards', serialHex), cur = await S.current(), rec, again = false;
      if (old && !old.exported) {
        throw K.fail('exists', 'this card is in use in this browser already');
      }
      if (cur && cur.serial !== serialHex) {
        throw K.fail('exists', 'this browser already holds card ' + cur.serial + ' (' +
                     cur.address + '): export it first');
      }
      if (old && (card.upNext < BigInt(old.upNext) || card.downNext < BigInt(old.downNext))) {
        throw K.fail('stale', 'this file is an older copy of the card than the one this browser ' +
                     'handed over (its counters are behind): it would reuse one-time keys');
      }
      again = !!old;
      rec = await sealRecord({ serial: serialHex, imported: Date.now(), exported: 0 }, card);
      await S.tx(['cards'], 'readwrite', function (cs) { cs.put(rec); });
      return { rec: rec, again: again };
    });
  };

  /* Hand the card over: the file bytes (plain or with pass), and the record
   * marked exported in the same step, so the page never uses it again.
   * Refused while the outbox holds envelopes of this card. */
  S.exportCard = function (serialHex, pass) {
    return lock('kmdc-send-' + serialHex, function () {
      return lock('kmdc-recv-' + serialHex, function () {
        return lock('kmdc-card-' + serialHex, async function () {
          var rec = await S.get('cards', serialHex), card, file, pending;
          if (!rec || rec.exported) { throw K.fail('gone', 'no card to export'); }
          pending = (await S.all('outbox')).filter(function (e) { return e.serial === serialHex; });
          if (pending.length) {
            throw K.fail('outbox', 'the outbox still holds ' + pending.length + ' envelope(s) of ' +
                         'this card: send or discard them before the card is handed over');
          }
          card = await unseal(rec);
          try {
            file = await K.serializeCard(card, pass || '');
          } finally {
            K.cardWipe(card);
          }
          rec = Object.assign({}, rec, { exported: Date.now(), state: 'exported' });
          await S.tx(['cards'], 'readwrite', function (cs) { cs.put(rec); });
          return { file: file, rec: rec };
        });
      });
    });
  };

  /* The file of a handed-over card again (a download that failed), from the
   * keys kept until S.forget; the card itself stays unused here. */
  S.exportAgain = function (serialHex, pass) {
    return lock('kmdc-card-' + serialHex, async function () {
      var rec = await S.get('cards', serialHex), card;
      if (!rec || !rec.exported || !rec.sealed) { throw K.fail('gone', 'nothing to export again'); }
      card = await unseal(rec);
      try {
        return { file: await K.serializeCard(card, pass || ''), rec: rec };
      } finally {
        K.cardWipe(card);
      }
    });
  };

  /* Drop the keys of a handed-over card; its tombstone (serial, counters)
   * stays so an older copy is refused later. */
  S.forget = async function (serialHex) {
    await S.tx(['cards'], 'readwrite', async function (cs) {
      var rec = await req(cs.get(serialHex));
      if (rec && rec.exported) {
        delete rec.sealed;
        delete rec.iv;
        cs.put(rec);
      }
    });
  };

  window.KMDC_STORE = S;
}());
