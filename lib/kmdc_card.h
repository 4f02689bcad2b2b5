/*
 * kmdc_card.h - the card file: a user's software token on disk (docs/PROTOCOL.md section 9)
 * and the card side of the counter rules (docs/PROTOCOL.md section 4).
 *
 * A card holds its serial, address, datacenter URL, state, the up chain
 * (CK, up_next), the down chain (CK, down_next), the request key AK, the
 * activation value r while an activation is pending, the message keys of
 * skipped or still pending down counters, and a bounded list of deliveries
 * already written.  The byte layout is in docs/PROTOCOL.md ("Card file").
 *
 * Concurrency: this file never locks by itself.  A read-modify-write of the
 * card is `kmdc_card_lock(KMDC_LOCK_CARD)` -> load -> change -> save ->
 * unlock.  A sender also holds KMDC_LOCK_SEND from reserving a counter until
 * its upload is answered; a receiver holds KMDC_LOCK_RECV while it fetches.
 *
 * The safe order for a sender (a crash at any point never lets an envelope
 * leave whose counter the saved card has not passed):
 *   1. lock SEND; lock CARD; load
 *   2. kmdc_card_up_reserve               (in memory: seq n, MK_n, CK_{n+1})
 *   3. kmdc_outbox_create(seq n); seal the envelope into the temp file
 *   4. kmdc_card_save; unlock CARD        (fsync + rename: up_next = n+1 on disk)
 *   5. kmdc_outbox_commit                 (fsync + rename to <n>.kmdc)
 *   6. send; on an answer kmdc_outbox_remove; unlock SEND
 * After a crash, kmdc_outbox_list gives the envelopes to resend byte for byte;
 * a crash between 4 and 5 only skips counter n, which the datacenter's
 * window absorbs.  Leftover temp files (card or outbox) are ignored.
 *
 * A receiver (holding KMDC_LOCK_RECV), for each delivery m in seq order:
 * kmdc_card_down_key -> open the keyblock -> kmdc_card_down_advance, save ->
 * write the document to a temp file, fsync -> kmdc_card_delivery_record,
 * save -> rename the document into place -> kmdc_card_down_forget, save ->
 * acknowledge.  (kmdc_card_down_done records and forgets in one call.)
 *
 * Every secret is wiped on free and on every error path.
 *
 * The implementation is split by concern (kmdc_card.c, kmdc_card_format.c,
 * kmdc_card_chain.c, kmdc_card_lock.c, kmdc_card_outbox.c; kmdc_card_int.h
 * holds what they share); this header is the whole public interface.
 */
#ifndef KMDC_CARD_H
#define KMDC_CARD_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_crypto.h"
#include "kmdc_err.h"

/* File framing (docs/PROTOCOL.md). */
#define KMDC_CARD_MAGIC "KMDCCARD"
#define KMDC_CARD_MAGIC_LEN 8
#define KMDC_CARD_VERSION 1
#define KMDC_CARD_HEADER_LEN 48
#define KMDC_CARD_SUM_LEN 32
#define KMDC_CARD_SALT_LEN 16
#define KMDC_CARD_PROT_NONE 0
#define KMDC_CARD_PROT_SCRYPT 1

/* Bounds the parser enforces. */
#define KMDC_CARD_MAX_BODY (8u << 20)      /* body bytes (ciphertext incl. tag) */
#define KMDC_CARD_MAX_URL 2048             /* datacenter URL bytes */
#define KMDC_CARD_MAX_SKIPPED 1024         /* stored down message keys */
#define KMDC_CARD_MAX_AHEAD 1024           /* down seq at most down_next + this */
#define KMDC_CARD_MAX_DELIVERIES 4096      /* delivery records, oldest dropped */
#define KMDC_CARD_MAX_FILENAME 1024        /* bytes of a recorded file name */
#define KMDC_CARD_RESYNC_MAX (UINT64_C(1) << 20) /* steps one resync may take */

/* scrypt: the defaults, and the bounds a file may ask for, so a hostile file
 * cannot make a reader allocate more than 128 MiB or work more than 16 times
 * the default: 1 <= log2(N) <= 20, 1 <= r <= 32, 1 <= p <= 16,
 * r * N <= 2^20 (scrypt uses 128 * r * N bytes), p * r * N <= 2^22. */
#define KMDC_CARD_SCRYPT_LOG2N 15
#define KMDC_CARD_SCRYPT_R 8
#define KMDC_CARD_SCRYPT_P 1
#define KMDC_CARD_SCRYPT_LOG2N_MAX 20
#define KMDC_CARD_SCRYPT_R_MAX 32
#define KMDC_CARD_SCRYPT_P_MAX 16

typedef enum kmdc_card_state {
    KMDC_CARD_ISSUED = 1,   /* written by kmdcadm issue, not yet activated */
    KMDC_CARD_ACTIVE = 2    /* activation confirmed, keys rotated */
} kmdc_card_state;

typedef enum kmdc_card_lockwhich {
    KMDC_LOCK_CARD = 0,     /* CARD.lock: every read-modify-write (short) */
    KMDC_LOCK_SEND = 1,     /* CARD.send.lock: a sender, sealing to answer */
    KMDC_LOCK_RECV = 2      /* CARD.recv.lock: a receiver while it fetches */
} kmdc_card_lockwhich;

typedef struct kmdc_card kmdc_card;
typedef struct kmdc_card_lockh kmdc_card_lockh;

/* ---- creation, loading, saving ------------------------------------------ */

/*
 * Create an in-memory card for the issuer: state issued, both counters 0,
 * the three keys copied (the caller wipes its own copies), no stores.
 * address must match the address rule, url is 1..KMDC_CARD_MAX_URL printable
 * ASCII bytes without spaces, serial lies in 1 .. 2^63-1.
 */
kmdc_status kmdc_card_new(kmdc_card **out, uint64_t serial, const char *address,
                          const char *url, const uint8_t uck0[KMDC_KEY_LEN],
                          const uint8_t dck0[KMDC_KEY_LEN],
                          const uint8_t ak[KMDC_KEY_LEN], kmdc_err *err);

/* Wipe every secret of the card and free it.  Accepts NULL. */
void kmdc_card_free(kmdc_card *card);

/*
 * Choose the scrypt parameters used by the next passphrase-protected save
 * (N = 2^log2n).  The defaults are N = 2^15, r = 8, p = 1; tests choose a
 * small N.  Values outside the parser's bounds are refused (KMDC_ERR_ARG).
 */
kmdc_status kmdc_card_set_kdf(kmdc_card *card, unsigned log2n, unsigned r,
                              unsigned p, kmdc_err *err);

/*
 * Parse a card file image (the fuzzed parser).  The SHA-256 checksum is
 * checked first, so any damage is KMDC_ERR_CORRUPT; then magic and version
 * (KMDC_ERR_FORMAT), then the body: a passphrase-protected card needs pass
 * (NULL or "" -> KMDC_ERR_PASSPHRASE, "needs a passphrase"), a wrong one is
 * KMDC_ERR_PASSPHRASE; pass is ignored for an unprotected card.  Every
 * length is checked and bounded; a short body is KMDC_ERR_TRUNCATED, bytes
 * after the last field KMDC_ERR_TRAILING, a value out of range
 * KMDC_ERR_FORMAT.
 */
kmdc_status kmdc_card_parse(const uint8_t *buf, size_t len, const char *pass,
                            kmdc_card **out, kmdc_err *err);

/*
 * Build the file image of the card: protected with pass when pass is
 * non-empty (fresh salt and IV, the card's scrypt parameters), else plain.
 * A card loaded with a passphrase refuses to be written without one
 * (KMDC_ERR_PASSPHRASE) unless kmdc_card_set_unprotected was called.
 * *out is malloc'd and holds secrets: release it with kmdc_freezero.
 */
kmdc_status kmdc_card_serialize(const kmdc_card *card, const char *pass,
                                uint8_t **out, size_t *outlen, kmdc_err *err);

/*
 * Load a card file.  The path must not be a symbolic link (KMDC_ERR_PERM: the
 * atomic rename would replace the link, not the card, and leave a stale copy
 * behind) and must be a regular file that neither group nor others may read
 * or write (KMDC_ERR_PERM, the message names the chmod to run).  Then as
 * kmdc_card_parse.  A file larger than any card is KMDC_ERR_LIMIT.
 */
kmdc_status kmdc_card_load(const char *path, const char *pass, kmdc_card **out,
                           kmdc_err *err);

/*
 * Replace the card file atomically: a new temp file in the same folder
 * (O_EXCL, unique name, mode 0600 whatever the umask), write, fsync, rename
 * over path, fsync the folder.  The old file stays whole until the rename.
 * Creates path when absent.  A path that is a symbolic link is refused.
 */
kmdc_status kmdc_card_save(const kmdc_card *card, const char *path,
                           const char *pass, kmdc_err *err);

/*
 * As kmdc_card_save, for a card that is being created (kmdcadm issue): when
 * path exists and overwrite is 0 this fails with KMDC_ERR_IO and leaves the
 * existing file untouched (the new file is linked in place, never renamed
 * over an existing one).
 */
kmdc_status kmdc_card_save_new(const kmdc_card *card, const char *path,
                               const char *pass, int overwrite, kmdc_err *err);

/* Mark a card loaded with a passphrase as deliberately unprotected, so the
 * next save without a passphrase writes it in the clear. */
void kmdc_card_set_unprotected(kmdc_card *card);

/*
 * Read a passphrase file: its first line, without the line end, into
 * buf[0..cap) (NUL-terminated).  Like a card file, a regular passphrase file
 * that group or others may read or write is refused (KMDC_ERR_PERM, the
 * message names the chmod to run); a pipe such as bash's <(...) is fine.
 * An empty file or first line, or a line of cap - 1 bytes or more, is
 * KMDC_ERR_PASSPHRASE; a file that cannot be opened or read KMDC_ERR_IO.
 * buf is wiped on failure.
 */
kmdc_status kmdc_passphrase_file_read(const char *path, char *buf, size_t cap,
                                      kmdc_err *err);

/* ---- accessors ----------------------------------------------------------- */

/* The card's serial (1 .. 2^63-1). */
uint64_t kmdc_card_serial(const kmdc_card *card);
/* The card's address, NUL-terminated. */
const char *kmdc_card_address(const kmdc_card *card);
/* The datacenter URL, NUL-terminated (e.g. https://host/kmdc). */
const char *kmdc_card_url(const kmdc_card *card);
/* KMDC_CARD_ISSUED or KMDC_CARD_ACTIVE. */
kmdc_card_state kmdc_card_get_state(const kmdc_card *card);
/* The next up counter to be used for sending. */
uint64_t kmdc_card_up_next(const kmdc_card *card);
/* The next down counter the card has not yet passed. */
uint64_t kmdc_card_down_next(const kmdc_card *card);
/* The request authentication key AK (32 bytes, owned by the card). */
const uint8_t *kmdc_card_ak(const kmdc_card *card);
/* 1 when the card was loaded from, or will by default be saved to, a
 * passphrase-protected file. */
int kmdc_card_is_protected(const kmdc_card *card);
/* 1 while an activation is pending (r kept, keys not yet rotated). */
int kmdc_card_activation_pending(const kmdc_card *card);
/* How many down message keys the card currently stores. */
size_t kmdc_card_skipped_count(const kmdc_card *card);
/* How many delivery records the card currently keeps. */
size_t kmdc_card_delivery_count(const kmdc_card *card);

/* ---- activation (docs/PROTOCOL.md sections 2 and 7) --------------------------------------- */

/*
 * Begin (or resume) an activation: when no r is pending draw 32 random bytes
 * and keep them in the card; copy the pending r to r_out.  The caller saves
 * the card BEFORE sending r, and sends the same r again after a lost answer.
 * Only for an issued card (KMDC_ERR_ARG otherwise).
 */
kmdc_status kmdc_card_activation_begin(kmdc_card *card,
                                       uint8_t r_out[KMDC_KEY_LEN],
                                       kmdc_err *err);

/*
 * Compute the rotated keys kmdc_activate_key(r, K) for a trial request
 * without changing the card; any output may be NULL.  Needs a pending r.
 */
kmdc_status kmdc_card_activation_preview(const kmdc_card *card,
                                         uint8_t uck[KMDC_KEY_LEN],
                                         uint8_t dck[KMDC_KEY_LEN],
                                         uint8_t ak[KMDC_KEY_LEN],
                                         kmdc_err *err);

/*
 * The new keys were seen to work: replace the three keys by their rotated
 * values, wipe r, set state active.  Needs a pending r.  Persist with save.
 */
kmdc_status kmdc_card_activation_confirm(kmdc_card *card, kmdc_err *err);

/* ---- up chain (sending) --------------------------------------------------- */

/*
 * Reserve the next up counter: seq = up_next, mk_out = MK_seq, the card's up
 * CK becomes CK_{seq+1} and up_next = seq + 1, in memory only: save the card
 * before the envelope leaves.  KMDC_ERR_EXHAUSTED when up_next + 1 would
 * pass 2^63-1; KMDC_ERR_ARG for a card that is not active.
 */
kmdc_status kmdc_card_up_reserve(kmdc_card *card, uint64_t *seq,
                                 uint8_t mk_out[KMDC_KEY_LEN], kmdc_err *err);

/* ---- down chain (receiving) ----------------------------------------------- */

/*
 * The message key for delivery seq m, without changing the card: from the
 * store when m < down_next (KMDC_ERR_NOTFOUND when the key is gone: used or
 * too old), by stepping a copy of the chain when down_next <= m <=
 * down_next + KMDC_CARD_MAX_AHEAD, else KMDC_ERR_LIMIT.
 */
kmdc_status kmdc_card_down_key(const kmdc_card *card, uint64_t m,
                               uint8_t mk_out[KMDC_KEY_LEN], kmdc_err *err);

/*
 * Commit delivery m after its keyblock authenticated.  When m >= down_next:
 * store the keys of the skipped counters down_next .. m-1 and of m itself
 * (pending until the document is written), set CK to CK_{m+1}, down_next =
 * m + 1, and drop stored keys more than KMDC_CARD_MAX_SKIPPED behind the new
 * down_next.  When m < down_next and its key is stored: nothing to do.
 * Persist with save.
 */
kmdc_status kmdc_card_down_advance(kmdc_card *card, uint64_t m, kmdc_err *err);

/*
 * Delivery m has been safely written as filename: erase the key of m and
 * record delivery_id -> filename (1..KMDC_CARD_MAX_FILENAME bytes), newest
 * last; past KMDC_CARD_MAX_DELIVERIES records the oldest is dropped.  A
 * repeated id is moved to the newest place with the new name.  m must be
 * below down_next (advance first).  Persist with save, then acknowledge.
 */
kmdc_status kmdc_card_down_done(kmdc_card *card, uint64_t m,
                                uint64_t delivery_id, const char *filename,
                                kmdc_err *err);

/*
 * The two halves of kmdc_card_down_done, for the order of docs/PROTOCOL.md section 4:
 * record delivery_id -> filename (same rules as above; m need not be known)
 * and save BEFORE the final rename of the document; after the rename erase
 * the key of m (kmdc_card_down_forget: m must be below down_next; a key
 * already gone is not an error) and save, then acknowledge.
 */
kmdc_status kmdc_card_delivery_record(kmdc_card *card, uint64_t delivery_id,
                                      const char *filename, kmdc_err *err);
kmdc_status kmdc_card_down_forget(kmdc_card *card, uint64_t m, kmdc_err *err);

/*
 * Was delivery id already written?  KMDC_OK and *filename (owned by the
 * card, valid until the card changes) or KMDC_ERR_NOTFOUND.
 */
kmdc_status kmdc_card_delivery_lookup(const kmdc_card *card, uint64_t id,
                                      const char **filename, kmdc_err *err);

/*
 * Move counters forward after the datacenter said it is ahead (GET /card):
 * up_next and down_next may only grow (KMDC_ERR_ARG to go back: the old keys
 * are gone), each by at most KMDC_CARD_RESYNC_MAX steps (KMDC_ERR_LIMIT);
 * the chain key is stepped to the new counter.  A down resync stores no keys
 * for the counters it passes and drops stored keys that fall out of the
 * window.  Pass the current value to leave a counter alone.
 */
kmdc_status kmdc_card_resync(kmdc_card *card, uint64_t up_next,
                             uint64_t down_next, kmdc_err *err);

/* ---- lock files ----------------------------------------------------------- */

/*
 * Take one of the three lock files beside the card (CARD.lock,
 * CARD.send.lock, CARD.recv.lock; created 0600 when absent, never renamed
 * or removed) with flock(LOCK_EX).  wait == 0: fail at once with
 * KMDC_ERR_LOCKED when another holder has it; else block until free.
 * Two handles exclude each other even inside one process.
 */
kmdc_status kmdc_card_lock(const char *card_path, kmdc_card_lockwhich which,
                           int wait, kmdc_card_lockh **out, kmdc_err *err);

/* Release a lock taken by kmdc_card_lock.  Accepts NULL. */
void kmdc_card_unlock(kmdc_card_lockh *h);

/* ---- outbox (CARD.outbox/, mode 0700) -------------------------------------- */

/*
 * Start an outbox entry for up counter seq: creates CARD.outbox/ (0700) when
 * absent, opens a fresh temp file in it (O_EXCL, 0600) and returns its fd and
 * malloc'd path.  Write the sealed envelope to fd, then commit or abort.
 */
kmdc_status kmdc_outbox_create(const char *card_path, uint64_t seq, int *fd,
                               char **tmppath, kmdc_err *err);

/*
 * Finish an entry: fsync and close fd (always closed), move the temp file to
 * CARD.outbox/<seq as 16 hex>.kmdc (refused if that entry already exists),
 * fsync the folder; tmppath is freed.
 */
kmdc_status kmdc_outbox_commit(const char *card_path, uint64_t seq, int fd,
                               char *tmppath, kmdc_err *err);

/* Drop an unfinished entry: close fd, unlink and free tmppath. */
void kmdc_outbox_abort(int fd, char *tmppath);

/*
 * The committed entries, in seq order: *seqs is malloc'd (NULL when none).
 * Temp files and foreign names are ignored; a missing outbox is empty.
 */
kmdc_status kmdc_outbox_list(const char *card_path, uint64_t **seqs, size_t *n,
                             kmdc_err *err);

/* The malloc'd path of the committed entry for seq (it need not exist). */
kmdc_status kmdc_outbox_path(const char *card_path, uint64_t seq, char **out,
                             kmdc_err *err);

/* Remove the entry for seq after its upload was answered, fsync the folder.
 * An entry already gone is not an error. */
kmdc_status kmdc_outbox_remove(const char *card_path, uint64_t seq,
                               kmdc_err *err);

/* Delete leftover temp files in the outbox.  Call with the SEND lock held
 * (then no other sender is writing one). */
kmdc_status kmdc_outbox_sweep(const char *card_path, kmdc_err *err);

#endif
