#!/usr/bin/python3
"""Recompute docs/vectors/ with a second, independent implementation of KMDC/1.

Written from docs/PROTOCOL.md alone in Python (hashlib, hmac, and the
'cryptography' package for HKDF and AES-GCM), so a mistake shared by the C
library and its own generator cannot hide.  Prints TAP.
usage: vectors_independent.py VECTOR_DIR
"""
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

n = 0
failed = 0


def ok(cond, name):
    global n, failed
    n += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (n, name))
    if not cond:
        failed += 1


def H(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def hkdf(salt, ikm, info, length=32):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None,
                info=info).derive(ikm)


def x(s):
    return bytes.fromhex(s)


def u64(v):
    return struct.pack(">Q", v)


def tlv_encode(meta, direction):
    entries = []
    for r in meta.get("rcpt", []):
        entries.append((0x01, r.encode()))
    if "name" in meta:
        entries.append((0x02, meta["name"].encode("utf-8")))
    if "type" in meta:
        entries.append((0x03, meta["type"].encode()))
    entries.append((0x04, u64(meta["size"])))
    entries.append((0x05, u64(meta["sent"])))
    if direction == 2:
        entries.append((0x10, meta["from"].encode()))
        entries.append((0x11, u64(meta["fromserial"])))
        entries.append((0x12, u64(meta["msgid"])))
        entries.append((0x13, u64(meta["rcvd"])))
    entries.sort(key=lambda e: e[0])   # stable: RCPT keeps its order
    return b"".join(bytes([t]) + struct.pack(">H", len(v)) + v for t, v in entries)


def seal(direction, serial, seq, mk, salt, dek, meta, doc):
    header = b"KMDC" + bytes([1, direction]) + b"\x00\x00" + u64(serial) + u64(seq) + salt
    kbk = hkdf(salt, mk, b"KMDC/1 keyblock")
    keyblock = AESGCM(kbk).encrypt(b"\x00" * 12, dek + tlv_encode(meta, direction), header)
    pk = hkdf(b"", dek, b"KMDC/1 payload")
    chunks = [doc[i:i + 65536] for i in range(0, len(doc), 65536)] or [b""]
    payload = b""
    for i, c in enumerate(chunks):
        iv = i.to_bytes(11, "big") + bytes([1 if i == len(chunks) - 1 else 0])
        payload += AESGCM(pk).encrypt(iv, c, None)
    return header, keyblock, payload, kbk, pk


def main(d):
    def load(name):
        with open(os.path.join(d, name)) as f:
            return json.load(f)

    c = load("chain.json")
    for s in c["steps"]:
        ck = x(c["ck0"])
        for _ in range(s["n"]):
            ck = H(ck, b"\x02")
        ok(ck.hex() == s["chain_key"], "chain n=%d chain key" % s["n"])
        ok(H(ck, b"\x01").hex() == s["message_key"], "chain n=%d message key" % s["n"])
        ok(H(ck, b"\x02").hex() == s["next_chain_key"], "chain n=%d next chain key" % s["n"])

    a = load("activation.json")
    for k in a["keys"]:
        out = hkdf(x(a["r"]), x(k["key"]), b"KMDC/1 activate " + k["name"].encode())
        ok(out.hex() == k["rotated"], "activation %s" % k["name"])

    kd = load("kdf.json")
    kb = kd["keyblock_key"]
    ok(hkdf(x(kb["salt"]), x(kb["message_key"]), b"KMDC/1 keyblock").hex() == kb["kbk"], "KBK")
    pk = kd["payload_key"]
    ok(hkdf(b"", x(pk["dek"]), b"KMDC/1 payload").hex() == pk["pk"], "PK")

    for v in load("envelopes.json")["envelopes"]:
        i, o = v["input"], v["output"]
        mk = H(x(i["chain_key"]), b"\x01")
        doc = bytes(j % 251 for j in range(i["document"]["length"]))
        header, keyblock, payload, kbk, pkey = seal(
            i["direction"], i["serial"], i["seq"], mk, x(i["salt"]), x(i["dek"]), i["meta"], doc)
        env = header + struct.pack(">I", len(keyblock)) + keyblock + payload
        ok(mk.hex() == o["message_key"], v["name"] + ": message key")
        ok(header.hex() == o["header"], v["name"] + ": header")
        ok(kbk.hex() == o["kbk"] and pkey.hex() == o["pk"], v["name"] + ": KBK and PK")
        ok(keyblock.hex() == o["keyblock"] and len(keyblock) == o["kb_len"], v["name"] + ": keyblock")
        ok(hashlib.sha256(payload).hexdigest() == o["payload_sha256"], v["name"] + ": payload")
        ok(hashlib.sha256(env).hexdigest() == o["envelope_sha256"], v["name"] + ": envelope")

    for r in load("request.json")["requests"]:
        bh = hashlib.sha256(r["body"].encode()).hexdigest()
        nonce = r["nonce"]
        msg = ("KMDC/1 request\n%s\n%s\n%d\n%s\n%s" % (r["method"], r["target"], r["ts"], nonce, bh)).encode()
        sig = H(x(r["auth_key"]), msg).hex()
        ok(sig == r["sig"], r["name"] + ": signature")
        hdr = "KMDC1-HMAC-SHA256 serial=%016x,ts=%d,nonce=%s,sig=%s" % (r["serial"], r["ts"], nonce, sig)
        ok(hdr == r["authorization"], r["name"] + ": header")

    w = load("wrap.json")
    master = x(w["master_key"])
    for v in w["wrapped"]:
        salt = x(v["salt"])
        key = hkdf(salt, master, b"KMDC/1 wrap")
        aad = (b"KMDC/1 wrap" + struct.pack(">I", v["key_id"]) + u64(v["serial"])
               + v["field"].encode() + u64(v["counter"]))
        wrapped = struct.pack(">I", v["key_id"]) + salt + AESGCM(key).encrypt(b"\x00" * 12, x(v["value"]), aad)
        ok(wrapped.hex() == v["wrapped"], "wrap " + v["field"])
    ac = w["access_code"]
    canon = ac["typed"].upper().replace("-", "").replace("I", "1").replace("L", "1").replace("O", "0")
    ok(canon == ac["canonical"], "access code canonical form")
    ack = hkdf(b"", master, b"KMDC/1 access code")
    ok(H(ack, u64(ac["serial"]) + canon.encode()).hex() == ac["mac"], "access code mac")

    print("1..%d" % n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
