/*
 * The C ceiling for bench:fs: a low-level libfuse 3 server that passes every
 * request through to a directory (a tmpfs directory in the benchmark), so
 * what it measures is the cost of the FUSE round trips themselves, with the
 * best options libfuse 3 offers: writeback cache, 1 MiB reads and writes
 * (max_write, hence max_pages 256), readdirplus, multi-threaded loop.
 *
 *   c_ceiling BACKING_DIR MOUNTPOINT
 *
 * Runs in the foreground, prints "ready" once mounted, and unmounts on
 * SIGINT, SIGTERM or SIGHUP (libfuse's signal handlers end the loop). It is
 * built by scripts/bench/targets/c_ceiling.ts with
 * `cc $(pkg-config --cflags --libs fuse3)`.
 *
 * Inodes: each kernel node is one `struct node` holding an O_PATH descriptor
 * of the backing file, found again by (st_dev, st_ino), so a hard link is one
 * node. Invariant: a node lives while the kernel holds lookups on it
 * (`lookups` > 0), and the node's address is its FUSE node id; the root is
 * FUSE_ROOT_ID and is never forgotten.
 *
 * Deliberately left out, because a ceiling should not pay for them: xattrs
 * (libfuse answers ENOSYS, the kernel then stops asking, which also spares
 * the getxattr(security.capability) before every write that libfuse 3.14,
 * without HANDLE_KILLPRIV_V2, would otherwise cost), locks, ioctl,
 * copy_file_range and lseek. Everything is done with the server's
 * credentials (it is run as root, as the benchmark is).
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#define _GNU_SOURCE

#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Attribute and entry validity: libfuse's own defaults (1 s), as grovefs's libfuse 2 mount gets. */
static const double cache_timeout_s = 1.0;
static const unsigned max_write_bytes = 1u << 20;
enum { node_buckets = 1 << 16 };

struct node {
	struct node *next; /* in its hash bucket */
	dev_t dev;
	ino_t ino;
	int fd; /* O_PATH */
	uint64_t lookups;
};

struct dir_handle {
	DIR *dir;
	off_t offset; /* the stream position `pending` (or the next readdir) is at */
	struct dirent *pending; /* read from the stream but not yet sent: it did not fit */
};

static struct node root_node;
static struct node *buckets[node_buckets];
static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static int writeback_cache;

static struct node *node_of(fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &root_node : (struct node *)(uintptr_t)ino;
}

static fuse_ino_t id_of(struct node *n)
{
	return n == &root_node ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

static size_t bucket_of(dev_t dev, ino_t ino)
{
	return (size_t)((ino * 0x9e3779b97f4a7c15ull) ^ dev) & (node_buckets - 1);
}

static void proc_path(char *buf, size_t len, int fd)
{
	snprintf(buf, len, "/proc/self/fd/%d", fd);
}

/* Takes one lookup on the node for (st->st_dev, st->st_ino), adopting fd if the node is new, closing it if not. */
static struct node *take_node(int fd, const struct stat *st)
{
	if (st->st_dev == root_node.dev && st->st_ino == root_node.ino) {
		close(fd);
		return &root_node;
	}
	size_t b = bucket_of(st->st_dev, st->st_ino);
	pthread_mutex_lock(&nodes_lock);
	struct node *n = buckets[b];
	while (n != NULL && !(n->dev == st->st_dev && n->ino == st->st_ino))
		n = n->next;
	if (n != NULL) {
		n->lookups++;
		pthread_mutex_unlock(&nodes_lock);
		close(fd);
		return n;
	}
	n = calloc(1, sizeof(*n));
	if (n == NULL) {
		pthread_mutex_unlock(&nodes_lock);
		close(fd);
		return NULL;
	}
	n->dev = st->st_dev;
	n->ino = st->st_ino;
	n->fd = fd;
	n->lookups = 1;
	n->next = buckets[b];
	buckets[b] = n;
	pthread_mutex_unlock(&nodes_lock);
	return n;
}

static void drop_lookups(struct node *n, uint64_t count)
{
	if (n == &root_node)
		return;
	pthread_mutex_lock(&nodes_lock);
	n->lookups = count >= n->lookups ? 0 : n->lookups - count;
	if (n->lookups > 0) {
		pthread_mutex_unlock(&nodes_lock);
		return;
	}
	struct node **link = &buckets[bucket_of(n->dev, n->ino)];
	while (*link != n)
		link = &(*link)->next;
	*link = n->next;
	pthread_mutex_unlock(&nodes_lock);
	close(n->fd);
	free(n);
}

/* Looks `name` up in `parent`, taking one lookup on its node; returns 0 or an errno. */
static int lookup_entry(struct node *parent, const char *name, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	int fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW);
	if (fd < 0)
		return errno;
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		int err = errno;
		close(fd);
		return err;
	}
	struct node *n = take_node(fd, &e->attr);
	if (n == NULL)
		return ENOMEM;
	e->ino = id_of(n);
	e->attr_timeout = cache_timeout_s;
	e->entry_timeout = cache_timeout_s;
	return 0;
}

static void reply_entry(fuse_req_t req, struct node *parent, const char *name)
{
	struct fuse_entry_param e;
	int err = lookup_entry(parent, name, &e);
	if (err != 0)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

/* Under the writeback cache the kernel reads pages of files opened write-only and keeps appends in order itself. */
static int backing_flags(int flags)
{
	if (!writeback_cache)
		return flags;
	if ((flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags & ~O_APPEND;
}

static void cc_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_WRITEBACK_CACHE) {
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
		writeback_cache = 1;
	}
	conn->max_write = max_write_bytes;
}

static void cc_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	reply_entry(req, node_of(parent), name);
}

static void cc_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	drop_lookups(node_of(ino), nlookup);
	fuse_reply_none(req);
}

static void cc_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		drop_lookups(node_of(forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void cc_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	if (fstatat(node_of(ino)->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, cache_timeout_s);
}

static int set_times(struct node *n, const struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		ts[0] = attr->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		ts[1] = attr->st_mtim;
	if (fi != NULL)
		return futimens((int)fi->fh, ts);
	/* utimensat with AT_EMPTY_PATH works on an O_PATH descriptor, symlinks included. */
	return utimensat(n->fd, "", ts, AT_EMPTY_PATH);
}

static void cc_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	char path[64];
	proc_path(path, sizeof(path), n->fd);
	int rc = 0;
	if (to_set & FUSE_SET_ATTR_MODE)
		rc = fi != NULL ? fchmod((int)fi->fh, attr->st_mode) : chmod(path, attr->st_mode);
	if (rc == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		rc = fchownat(n->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
	}
	if (rc == 0 && (to_set & FUSE_SET_ATTR_SIZE))
		rc = fi != NULL ? ftruncate((int)fi->fh, attr->st_size) : truncate(path, attr->st_size);
	if (rc == 0 && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW)))
		rc = set_times(n, attr, to_set, fi);
	if (rc < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	cc_getattr(req, ino, NULL);
}

static void cc_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char target[PATH_MAX + 1];
	ssize_t len = readlinkat(node_of(ino)->fd, "", target, sizeof(target));
	if (len < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	if ((size_t)len == sizeof(target)) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	target[len] = '\0';
	fuse_reply_readlink(req, target);
}

static void cc_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct node *p = node_of(parent);
	if (mknodat(p->fd, name, mode, rdev) < 0)
		fuse_reply_err(req, errno);
	else
		reply_entry(req, p, name);
}

static void cc_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct node *p = node_of(parent);
	if (mkdirat(p->fd, name, mode) < 0)
		fuse_reply_err(req, errno);
	else
		reply_entry(req, p, name);
}

static void cc_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct node *p = node_of(parent);
	if (symlinkat(link, p->fd, name) < 0)
		fuse_reply_err(req, errno);
	else
		reply_entry(req, p, name);
}

static void cc_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct node *p = node_of(newparent);
	/* AT_EMPTY_PATH on an O_PATH descriptor needs CAP_DAC_READ_SEARCH: the server runs as root. */
	if (linkat(node_of(ino)->fd, "", p->fd, newname, AT_EMPTY_PATH) < 0)
		fuse_reply_err(req, errno);
	else
		reply_entry(req, p, newname);
}

static void cc_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, unlinkat(node_of(parent)->fd, name, 0) < 0 ? errno : 0);
}

static void cc_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, unlinkat(node_of(parent)->fd, name, AT_REMOVEDIR) < 0 ? errno : 0);
}

static void cc_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	int rc = renameat2(node_of(parent)->fd, name, node_of(newparent)->fd, newname, flags);
	fuse_reply_err(req, rc < 0 ? errno : 0);
}

static void cc_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char path[64];
	proc_path(path, sizeof(path), node_of(ino)->fd);
	int fd = open(path, backing_flags(fi->flags) & ~O_NOFOLLOW);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fi->fh = (uint64_t)fd;
	fuse_reply_open(req, fi);
}

static void cc_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	struct node *p = node_of(parent);
	int fd = openat(p->fd, name, (backing_flags(fi->flags) | O_CREAT) & ~O_NOFOLLOW, mode);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	struct fuse_entry_param e;
	int err = lookup_entry(p, name, &e);
	if (err != 0) {
		close(fd);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uint64_t)fd;
	fuse_reply_create(req, &e, fi);
}

static void cc_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct fuse_bufvec data = FUSE_BUFVEC_INIT(size);
	data.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	data.buf[0].fd = (int)fi->fh;
	data.buf[0].pos = off;
	fuse_reply_data(req, &data, FUSE_BUF_SPLICE_MOVE);
}

static void cc_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = (int)fi->fh;
	out.buf[0].pos = off;
	ssize_t written = fuse_buf_copy(&out, in, 0);
	if (written < 0)
		fuse_reply_err(req, (int)-written);
	else
		fuse_reply_write(req, (size_t)written);
}

static void cc_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	/* close(2) of a duplicate reports what a close of the last descriptor would, without closing fi->fh. */
	int dup_fd = dup((int)fi->fh);
	fuse_reply_err(req, dup_fd < 0 || close(dup_fd) < 0 ? errno : 0);
}

static void cc_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	close((int)fi->fh);
	fuse_reply_err(req, 0);
}

static void cc_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	int rc = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
	fuse_reply_err(req, rc < 0 ? errno : 0);
}

static void cc_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	(void)ino;
	fuse_reply_err(req, fallocate((int)fi->fh, mode, off, len) < 0 ? errno : 0);
}

static void cc_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int fd = openat(node_of(ino)->fd, ".", O_RDONLY | O_DIRECTORY);
	if (fd < 0 || (d->dir = fdopendir(fd)) == NULL) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		free(d);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fuse_reply_open(req, fi);
}

static int is_dot_or_dotdot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

/* Adds one entry to buf; returns its size, which is more than `room` (and nothing added, no lookup kept) if it did not fit. */
static size_t add_entry(fuse_req_t req, struct node *dir, struct dirent *entry, char *buf, size_t room, int plus, int *err)
{
	if (!plus) {
		struct stat st = { .st_ino = entry->d_ino, .st_mode = (mode_t)entry->d_type << 12 };
		return fuse_add_direntry(req, buf, room, entry->d_name, &st, entry->d_off);
	}
	struct fuse_entry_param e = { 0 };
	if (is_dot_or_dotdot(entry->d_name)) {
		/* Node id 0: the kernel takes the name and makes no node of it. */
		e.attr.st_ino = entry->d_ino;
		e.attr.st_mode = (mode_t)entry->d_type << 12;
	} else if ((*err = lookup_entry(dir, entry->d_name, &e)) != 0) {
		return 0;
	}
	size_t size = fuse_add_direntry_plus(req, buf, room, entry->d_name, &e, entry->d_off);
	if (size > room && e.ino != 0)
		drop_lookups(node_of(e.ino), 1);
	return size;
}

static void read_directory(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi, int plus)
{
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	if (buf == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (off != d->offset) {
		seekdir(d->dir, off);
		d->pending = NULL;
		d->offset = off;
	}
	size_t used = 0;
	int err = 0;
	for (;;) {
		if (d->pending == NULL) {
			errno = 0;
			d->pending = readdir(d->dir);
			if (d->pending == NULL) {
				err = errno;
				break;
			}
		}
		size_t entry_size = add_entry(req, node_of(ino), d->pending, buf + used, size - used, plus, &err);
		if (err == ENOENT) {
			/* Removed between readdir and the lookup: leave it out. */
			err = 0;
			d->offset = d->pending->d_off;
			d->pending = NULL;
			continue;
		}
		if (err != 0 || entry_size > size - used)
			break;
		used += entry_size;
		d->offset = d->pending->d_off;
		d->pending = NULL;
	}
	/* An error after some entries were added is reported on the next call, which starts at it again. */
	if (err != 0 && used == 0)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

static void cc_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	read_directory(req, ino, size, off, fi, 0);
}

static void cc_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	read_directory(req, ino, size, off, fi, 1);
}

static void cc_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
	closedir(d->dir);
	free(d);
	fuse_reply_err(req, 0);
}

static void cc_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	int fd = dirfd(((struct dir_handle *)(uintptr_t)fi->fh)->dir);
	int rc = datasync ? fdatasync(fd) : fsync(fd);
	fuse_reply_err(req, rc < 0 ? errno : 0);
}

static void cc_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	if (fstatvfs(node_of(ino)->fd, &st) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &st);
}

static const struct fuse_lowlevel_ops ops = {
	.init = cc_init,
	.lookup = cc_lookup,
	.forget = cc_forget,
	.forget_multi = cc_forget_multi,
	.getattr = cc_getattr,
	.setattr = cc_setattr,
	.readlink = cc_readlink,
	.mknod = cc_mknod,
	.mkdir = cc_mkdir,
	.symlink = cc_symlink,
	.link = cc_link,
	.unlink = cc_unlink,
	.rmdir = cc_rmdir,
	.rename = cc_rename,
	.open = cc_open,
	.create = cc_create,
	.read = cc_read,
	.write_buf = cc_write_buf,
	.flush = cc_flush,
	.release = cc_release,
	.fsync = cc_fsync,
	.fallocate = cc_fallocate,
	.opendir = cc_opendir,
	.readdir = cc_readdir,
	.readdirplus = cc_readdirplus,
	.releasedir = cc_releasedir,
	.fsyncdir = cc_fsyncdir,
	.statfs = cc_statfs,
};

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT\n", argv[0]);
		return 2;
	}
	/* The kernel has applied the caller's umask to every mode it sends. */
	umask(0);
	root_node.fd = open(argv[1], O_PATH | O_DIRECTORY);
	struct stat st;
	if (root_node.fd < 0 || fstat(root_node.fd, &st) < 0) {
		fprintf(stderr, "c_ceiling: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	root_node.dev = st.st_dev;
	root_node.ino = st.st_ino;
	root_node.lookups = 2;

	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	if (fuse_opt_add_arg(&args, argv[0]) != 0 || fuse_opt_add_arg(&args, "-o") != 0 ||
	    fuse_opt_add_arg(&args, "fsname=c_ceiling,subtype=cceiling,default_permissions") != 0)
		return 1;
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (se == NULL)
		return 1;
	int rc = 1;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, argv[2]) != 0)
		goto out_signals;
	printf("ready\n");
	fflush(stdout);
	struct fuse_loop_config *loop = fuse_loop_cfg_create();
	/* Ended by a signal, the loop returns its number: a clean stop. */
	int ended = fuse_session_loop_mt(se, loop);
	rc = ended != 0 && ended != SIGINT && ended != SIGTERM && ended != SIGHUP;
	fuse_loop_cfg_destroy(loop);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	return rc;
}
