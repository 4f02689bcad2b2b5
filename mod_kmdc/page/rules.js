/* rules.js - the KMDC/1 naming and input rules the browser client applies,
 * in one place so they can be kept in step with lib/kmdc_tlv.c and
 * kmdc/kmdc_account.c.  Embedded in the page before client.js; exposes
 * window.KMDC_RULES. */
(function () {
  'use strict';
  var R = {};

  /* An address as typed: lower-cased, then ^[a-z0-9][a-z0-9._-]{0,63}$. */
  R.address = function (typed) {
    var a = String(typed).trim().toLowerCase();
    return /^[a-z0-9][a-z0-9._-]{0,63}$/.test(a) ? a : null;
  };

  /* Code points a NAME may not hold: C0 and C1 controls, DEL, '/', '\\', and
   * the bidirectional and invisible format characters. */
  function badCodePoint(c) {
    return c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f) || c === 0x2f ||
      c === 0x5c || c === 0x061c || (c >= 0x200b && c <= 0x200f) ||
      (c >= 0x202a && c <= 0x202e) || (c >= 0x2060 && c <= 0x2064) ||
      (c >= 0x2066 && c <= 0x2069) || c === 0xfeff;
  }

  /* NAME as bytes: valid UTF-8 (strict: no overlong form, no surrogate),
   * 1..255 bytes, not "." or "..", no forbidden code point. */
  R.nameValid = function (bytes) {
    var i = 0, n = bytes.length, b0, need, c, min, k;
    if (n < 1 || n > 255) { return false; }
    if ((n === 1 && bytes[0] === 0x2e) || (n === 2 && bytes[0] === 0x2e && bytes[1] === 0x2e)) {
      return false;
    }
    while (i < n) {
      b0 = bytes[i++];
      if (b0 < 0x80) { c = b0; need = 0; min = 0; }
      else if (b0 >= 0xc2 && b0 <= 0xdf) { c = b0 & 0x1f; need = 1; min = 0x80; }
      else if (b0 >= 0xe0 && b0 <= 0xef) { c = b0 & 0x0f; need = 2; min = 0x800; }
      else if (b0 >= 0xf0 && b0 <= 0xf4) { c = b0 & 0x07; need = 3; min = 0x10000; }
      else { return false; }
      if (n - i < need) { return false; }
      for (k = 0; k < need; k++) {
        if ((bytes[i] & 0xc0) !== 0x80) { return false; }
        c = (c << 6) | (bytes[i++] & 0x3f);
      }
      if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff) || badCodePoint(c)) {
        return false;
      }
    }
    return true;
  };

  /* The file name a receiver saves a valid NAME under: one starting with
   * '.' or '-' gets '_' in front. */
  R.saveName = function (name) {
    return /^[.-]/.test(name) ? '_' + name : name;
  };

  /* RFC 6838 type/subtype of at most 127 bytes (TYPE). */
  R.typeValid = function (t) {
    var rn = '[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}';
    return t.length <= 127 && new RegExp('^' + rn + '/' + rn + '$').test(t);
  };

  /* An access code as typed: letters, digits, '-' and ' ', at most 32
   * characters (as kmdc activate takes it); the datacenter canonicalises
   * it.  Returns the form-encoded value, or null. */
  /* Access codes (docs/PROTOCOL.md section 7): Crockford symbols, '-' and
   * spaces ignored, I and L read as 1, O as 0; 11 symbols carry a check
   * symbol (GF(32), x^5 + x^2 + 1) that must match, 10 are a code shown
   * without one.  The 10 canonical symbols, or null for a mistyped code
   * (refused here, so that it spends none of the card's attempts). */
  var CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
  function times2(s) {
    s <<= 1;
    return (s & 0x20) ? (s ^ 0x25) : s;
  }
  R.accessCodeCheck = function (canon) {
    var s = 0, i;
    for (i = 0; i < canon.length; i++) { s = times2(s) ^ CROCKFORD.indexOf(canon.charAt(i)); }
    return CROCKFORD.charAt(times2(s));
  };
  R.accessCode = function (typed) {
    var t = String(typed), out = '', i, ch;
    if (t.length > 64) { return null; }
    for (i = 0; i < t.length; i++) {
      ch = t.charAt(i).toUpperCase();
      if (ch === '-' || ch === ' ') { continue; }
      if (ch === 'I' || ch === 'L') { ch = '1'; } else if (ch === 'O') { ch = '0'; }
      if (CROCKFORD.indexOf(ch) < 0) { return null; }
      out += ch;
    }
    if (out.length === 11) {
      return R.accessCodeCheck(out.slice(0, 10)) === out.charAt(10) ? out.slice(0, 10) : null;
    }
    return out.length === 10 ? out : null;
  };

  window.KMDC_RULES = R;
}());
