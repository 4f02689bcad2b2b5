/*
 * kmdc_file.h - atomic replacement of a file, and syncing a folder.  The one
 * copy of the mechanism every writer of a durable file uses (the card, the
 * outbox, kmdcadm issue and setup, kmdc seal/open/fetch).  Also the one
 * "open it and refuse it when group or others may access it" check every
 * reader of a private file uses (card, passphrase file, master key, outbox).
 *
 * The steps, in this order, and why:
 *   1. create a temporary file in the SAME folder as the target (a rename is
 *      atomic only within one file system): "<dir>/.<stem>.<16 hex>.tmp",
 *      O_CREAT|O_EXCL|O_NOFOLLOW, then fchmod to the exact mode (umask-proof);
 *   2. the caller writes the content (kmdc_write_all, or its own stream);
 *   3. fsync the file, close it (close reports late write errors);
 *   4. rename it over the target - or, with KMDC_FILE_NOREPLACE, move it
 *      without ever replacing an existing target (renameat2 RENAME_NOREPLACE,
 *      link+unlink where the file system lacks it);
 *   5. fsync the folder, so the new name survives a crash.
 * A reader therefore sees the old content or the new one, never a mix.  A
 * failure at any step removes the temporary file (a crash leaves it behind:
 * the name starts with "." and ends with ".tmp" so a sweep can find it).
 *
 * Errors go to kmdc_err (may be NULL) with the path in the message:
 * KMDC_ERR_IO for a system call that fails (strerror appended) and for an
 * existing target under KMDC_FILE_NOREPLACE ("<path> already exists;
 * refusing to overwrite it"), KMDC_ERR_ARG for a missing argument or a path
 * that names a folder, KMDC_ERR_INTERNAL for out of memory.
 *
 * Thread safety: no shared state; the functions may run in several threads
 * at once (for different targets).  Temporary names draw from kmdc_random.
 */
#ifndef KMDC_FILE_H
#define KMDC_FILE_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "kmdc_err.h"

/* The mode of a new file when the caller gives 0. */
#define KMDC_FILE_MODE_DEFAULT 0600

/* Flags of kmdc_file_move, kmdc_atomic_open and kmdc_file_write_atomic. */
#define KMDC_FILE_NOREPLACE 0x01u /* refuse an existing target (KMDC_ERR_IO) */

/*
 * fsync the folder dir.  A file system that cannot fsync a folder (EINVAL,
 * EROFS) is not an error.  "cannot open folder <dir>: ..." or "cannot fsync
 * folder <dir>: ...".
 */
kmdc_status kmdc_fsync_dir(const char *dir, kmdc_err *err);

/* fsync the folder holding path ("." when path has no slash). */
kmdc_status kmdc_fsync_parent(const char *path, kmdc_err *err);

/*
 * Split path into a malloc'd folder ("." when there is no slash, "/" for a
 * file at the root) and a pointer to the base name inside path.  KMDC_ERR_ARG
 * when path is empty or ends with a slash.  *dir is NULL on failure; the
 * caller frees it.
 */
kmdc_status kmdc_path_split(const char *path, char **dir, const char **base,
                            kmdc_err *err);

/* Write all len bytes to fd (retrying short writes and EINTR); name is the
 * file named in the error ("cannot write <name>: ..."). */
kmdc_status kmdc_write_all(int fd, const void *buf, size_t len, const char *name,
                           kmdc_err *err);

/*
 * Step 1 alone: create "<dir>/.<stem>.<16 hex>.tmp" with mode (0 for
 * KMDC_FILE_MODE_DEFAULT), set exactly.  On success *fd is open for writing
 * and *tmppath is malloc'd; on failure *fd is -1, *tmppath NULL and nothing
 * is left on disk.
 */
kmdc_status kmdc_file_open_temp(const char *dir, const char *stem, mode_t mode,
                                int *fd, char **tmppath, kmdc_err *err);

/*
 * Rename dirfd/from to dirfd/to without ever replacing what is there
 * (RENAME_NOREPLACE, or link + unlink where the file system lacks it):
 * 0 moved, 1 when `to` exists (from is left as it was), -1 with errno set.
 * dirfd may be AT_FDCWD.
 */
int kmdc_rename_noreplace(int dirfd, const char *from, const char *to);

/*
 * Step 4 alone: move tmp to path (same folder), replacing an existing path
 * unless flags has KMDC_FILE_NOREPLACE.  On failure tmp is left as it was
 * (the caller removes it).  Does not fsync the folder.
 */
kmdc_status kmdc_file_move(const char *tmp, const char *path, unsigned flags,
                           kmdc_err *err);

/*
 * Steps 3 to 5 for a temporary file from kmdc_file_open_temp: fsync and
 * close fd, move tmppath to path, fsync the folder.  Always consumes fd and
 * tmppath: both are closed/freed, and the temporary file is removed on any
 * failure before the move.
 */
kmdc_status kmdc_file_commit_temp(int fd, char *tmppath, const char *path,
                                  unsigned flags, kmdc_err *err);

/* Close fd (if >= 0), remove and free tmppath (if not NULL). */
void kmdc_file_abort_temp(int fd, char *tmppath);

/* ---- a writer that streams: open, write to its descriptor, commit or abort ---- */

typedef struct kmdc_atomic kmdc_atomic;

/*
 * Start replacing path: a temporary file beside it named after stem (NULL:
 * the base name of path), with mode (0: 0600).  flags as for kmdc_file_move.
 * With KMDC_FILE_NOREPLACE an existing path is refused here already (and
 * again, atomically, at commit).  *out is NULL on failure.
 */
kmdc_status kmdc_atomic_open(kmdc_atomic **out, const char *path, const char *stem,
                             mode_t mode, unsigned flags, kmdc_err *err);

/* The descriptor to write to (owned by the writer: do not close it). */
int kmdc_atomic_fd(const kmdc_atomic *a);

/* The temporary file's path (valid until commit or abort). */
const char *kmdc_atomic_tmppath(const kmdc_atomic *a);

/* fsync, close, move into place, fsync the folder.  Frees a on every path;
 * on failure the target is untouched and the temporary file removed. */
kmdc_status kmdc_atomic_commit(kmdc_atomic *a, kmdc_err *err);

/* Drop the temporary file and free a.  Accepts NULL. */
void kmdc_atomic_abort(kmdc_atomic *a);

/*
 * The whole of it for bytes in memory: write len bytes of data to path
 * atomically with mode (0: 0600) and flags.  The temporary file is named
 * after the base name of path.
 */
kmdc_status kmdc_file_write_atomic(const char *path, const void *data, size_t len,
                                   mode_t mode, unsigned flags, kmdc_err *err);

/* ---- private files: readable by their owner only ---- */

/* Flags of kmdc_file_open_private and kmdc_file_check_private. */
#define KMDC_PRIVATE_NOFOLLOW 0x01u /* O_NOFOLLOW: a symbolic link is refused */
#define KMDC_PRIVATE_NONBLOCK 0x02u /* O_NONBLOCK: opening a FIFO does not wait */
#define KMDC_PRIVATE_READABLE 0x04u /* the module's wording (below) */

/*
 * Refuse st when group or others have any permission bit (mode & 077),
 * KMDC_ERR_PERM; the type of the file is not looked at (the caller decides
 * which types it takes).  The message names the chmod to run, 600 for a file
 * and 700 for a folder:
 *   "<what> can be read or written by others; run: chmod 600 <path>"
 * or, with KMDC_PRIVATE_READABLE (the module's wording since its first
 * release, pinned by t/002_config.t and docs/ADMIN.md):
 *   "<path> is readable by group or others; chmod 600 <path>"
 *   "<path> is accessible to group or others; chmod 600 <path>" (no read bit)
 * Other flags are ignored here.
 */
kmdc_status kmdc_file_check_private(const struct stat *st, const char *what,
                                    const char *path, unsigned flags, kmdc_err *err);

/*
 * Open path for reading (O_RDONLY|O_CLOEXEC|O_NOCTTY, plus O_NOFOLLOW and
 * O_NONBLOCK as flags ask), fstat it into *st, and refuse a REGULAR file
 * that kmdc_file_check_private refuses (any other type - a pipe, a folder -
 * is returned for the caller to accept or refuse).  what names the file in
 * the messages ("card file"):
 *   "<what> <path> is a symbolic link; give the path of the file itself"
 *       KMDC_ERR_PERM, under KMDC_PRIVATE_NOFOLLOW;
 *   "cannot open <what> <path>: <strerror>"  KMDC_ERR_IO;
 *   "cannot stat <what> <path>: <strerror>"  KMDC_ERR_IO.
 * On success *fd is open (the caller closes it; O_NONBLOCK stays set when
 * asked); on failure *fd is -1 and nothing is open.  No shared state.
 */
kmdc_status kmdc_file_open_private(const char *path, unsigned flags, int *fd,
                                   struct stat *st, const char *what, kmdc_err *err);

#endif
