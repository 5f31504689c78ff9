/* aioproc._runcore: the system calls of one run(), in C.
 *
 * A short run(["true"]) is mostly the child's own exec; what the parent adds
 * counts almost one for one, because the child runs on the CPU that started
 * it. In Python the parent spent about 100 us more than the bare posix_spawn
 * + waitpid floor, in some 100 small calls around 25 system calls. Core does
 * the same system calls from C, in four calls from Python:
 *
 *     Core(argv, envp, search, stdin, stdout, stderr, input, limit)
 *         pipes, /dev/null, posix_spawn(p) (dup2 0..2, closefrom(3), own
 *         process group, SIGPIPE/SIGXFSZ default), pidfd, one epoll fd
 *     serve()     epoll_wait(0): feed stdin, read stdout/stderr, see the exit
 *     finish()    leader gone: close our write ends, read what is left; at
 *                 EOF: SIGKILL the group, wait4 (return code, rusage), probe
 *     close()
 *
 * The rules (what is read when, limits, EOF, the group) are those of the
 * Python core in _run.py (_PyCore), which serves every other case; both are
 * tested against the same expectations. The caller waits for fileno() to be
 * readable between serve() calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 34) || !defined(SYS_pidfd_open)
#error "needs glibc 2.34 (posix_spawn_file_actions_addclosefrom_np) and pidfd_open"
#endif

extern char **environ;

#define MODE_INHERIT 0
#define MODE_DEVNULL 1
#define MODE_PIPE 2
#define MODE_STDOUT 3 /* stderr only: a copy of the child's stdout */

/* serve() result bits */
#define S_EXITED 1       /* the leader has exited (not reaped) */
#define S_OUTPUTS_DONE 2 /* every output pipe is at EOF */
#define S_LIMIT 4        /* an output passed the limit (limit_hit says which) */
#define S_IDLE 8         /* nothing was ready */

#define READ_SIZE (1 << 20)
#define SMALL_READ (1 << 16) /* a default pipe's size */
#define READS_PER_TURN 16
#define GROWN_PIPE_SIZE (1 << 20)

typedef struct {
    PyObject_HEAD
    int pid;
    int pidfd;
    int epfd;
    int in_fd;           /* our end of the child's stdin pipe, -1 */
    PyObject *input;     /* bytes still to write (from input_pos), NULL */
    Py_ssize_t input_pos;
    int out_fd[2];       /* our ends of stdout / stderr, -1 */
    int held[2];         /* the child's write ends, held until the leader exits */
    PyObject *chunks[2]; /* list of bytes per output pipe, NULL when not a pipe */
    Py_ssize_t size[2];
    char eof[2];
    char grown[2];
    char registered[2];  /* still in the epoll set */
    char pidfd_registered;
    char exited;
    char enforce_limit;
    char group_gone;
    int limit_hit;       /* -1, 0 (stdout) or 1 (stderr) */
    Py_ssize_t limit;    /* -1: none */
    int reaped;
    int status;
    struct rusage ru;
} Core;

static posix_spawnattr_t spawn_attr;
static int spawn_attr_ready;

static int
close_fd(int *fd)
{
    int rc = 0;
    if (*fd >= 0) {
        rc = close(*fd);
        *fd = -1;
    }
    return rc;
}

static int
set_nonblocking(int fd)
{
    return fcntl(fd, F_SETFL, O_NONBLOCK); /* pipe ends carry no other status flag */
}

/* -- start ------------------------------------------------------------------- */

static int
make_spawn_attr(void)
{
    sigset_t reset;
    if (spawn_attr_ready) {
        return 0;
    }
    if (posix_spawnattr_init(&spawn_attr) != 0) {
        return -1;
    }
    sigemptyset(&reset);
    sigaddset(&reset, SIGPIPE);
    sigaddset(&reset, SIGXFSZ);
    if (posix_spawnattr_setsigdefault(&spawn_attr, &reset) != 0 ||
        posix_spawnattr_setpgroup(&spawn_attr, 0) != 0 ||
        posix_spawnattr_setflags(&spawn_attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP) !=
            0) {
        posix_spawnattr_destroy(&spawn_attr);
        return -1;
    }
    spawn_attr_ready = 1;
    return 0;
}

/* A NULL-terminated char *[] over the items of *seq* (bytes, or str encoded
 * with the file system encoding), kept alive by *keep* (a new list). */
static char **
c_strings(PyObject *seq, PyObject **keep, const char *what)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **out = PyMem_New(char *, n + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    *keep = PyList_New(n);
    if (*keep == NULL) {
        PyMem_Free(out);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *data;
        if (PyBytes_Check(item)) {
            Py_INCREF(item);
            data = item;
        }
        else if (PyUnicode_Check(item)) {
            data = PyUnicode_EncodeFSDefault(item);
            if (data == NULL) {
                goto fail;
            }
        }
        else {
            PyObject *path = PyOS_FSPath(item); /* os.PathLike */
            if (path == NULL) {
                PyErr_Format(PyExc_TypeError, "%s items must be str, bytes or os.PathLike", what);
                goto fail;
            }
            if (PyUnicode_Check(path)) {
                data = PyUnicode_EncodeFSDefault(path);
                Py_DECREF(path);
                if (data == NULL) {
                    goto fail;
                }
            }
            else {
                data = path;
            }
        }
        PyList_SET_ITEM(*keep, i, data);
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(data)) != PyBytes_GET_SIZE(data)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
        out[i] = PyBytes_AS_STRING(data);
    }
    out[n] = NULL;
    return out;
fail:
    Py_CLEAR(*keep);
    PyMem_Free(out);
    return NULL;
}

static void
core_close_all(Core *self)
{
    close_fd(&self->in_fd);
    for (int i = 0; i < 2; i++) {
        close_fd(&self->out_fd[i]);
        close_fd(&self->held[i]);
    }
    close_fd(&self->epfd);
    close_fd(&self->pidfd);
}

static int
add_watch(Core *self, int fd, uint32_t events)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.fd = fd;
    return epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"argv",   "envp",  "search", "stdin", "stdout",
                             "stderr", "input", "limit",  NULL};
    PyObject *argv_obj, *envp_obj, *input_obj;
    int search, modes[3];
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOpiiiOn:Core", kwlist, &argv_obj, &envp_obj,
                                     &search, &modes[0], &modes[1], &modes[2], &input_obj,
                                     &limit)) {
        return NULL;
    }
    if (modes[0] != MODE_DEVNULL && modes[0] != MODE_PIPE) {
        PyErr_SetString(PyExc_ValueError, "stdin must be devnull or pipe");
        return NULL;
    }
    for (int i = 1; i < 3; i++) {
        if (modes[i] < MODE_INHERIT || modes[i] > (i == 2 ? MODE_STDOUT : MODE_PIPE)) {
            PyErr_SetString(PyExc_ValueError, "unknown stdio mode");
            return NULL;
        }
    }
    if (input_obj != Py_None && !PyBytes_Check(input_obj)) {
        PyErr_SetString(PyExc_TypeError, "input must be bytes or None");
        return NULL;
    }

    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->pid = -1;
    self->pidfd = self->epfd = self->in_fd = -1;
    self->out_fd[0] = self->out_fd[1] = self->held[0] = self->held[1] = -1;
    self->limit = limit < 0 ? -1 : limit;
    self->limit_hit = -1;
    self->enforce_limit = 1;

    PyObject *argv_seq = NULL, *argv_keep = NULL, *envp_seq = NULL, *envp_keep = NULL;
    PyObject *result = NULL;
    char **argv = NULL, **envp = environ;
    int sources[3] = {-1, -1, -1}; /* the child's fd 0..2 (-1: ours) */
    int child_only[2] = {-1, -1};  /* /dev/null, stdin read end: closed after the spawn */
    posix_spawn_file_actions_t actions;
    int have_actions = 0, error;

    argv_seq = PySequence_Fast(argv_obj, "argv must be a sequence");
    if (argv_seq == NULL) {
        goto fail;
    }
    if (PySequence_Fast_GET_SIZE(argv_seq) == 0) {
        PyErr_SetString(PyExc_ValueError, "args must name a program");
        goto fail;
    }
    argv = c_strings(argv_seq, &argv_keep, "argv");
    if (argv == NULL) {
        goto fail;
    }
    if (envp_obj != Py_None) {
        envp_seq = PySequence_Fast(envp_obj, "envp must be a sequence");
        if (envp_seq == NULL) {
            goto fail;
        }
        envp = c_strings(envp_seq, &envp_keep, "envp");
        if (envp == NULL) {
            goto fail;
        }
    }
    if (make_spawn_attr() < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }

    int fds[2];
    if (modes[0] == MODE_DEVNULL || modes[1] == MODE_DEVNULL || modes[2] == MODE_DEVNULL) {
        /* one read-write /dev/null serves every stream that wants it */
        child_only[0] = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (child_only[0] < 0) {
            goto os_error;
        }
    }
    if (modes[0] == MODE_DEVNULL) {
        sources[0] = child_only[0];
    }
    else {
        if (pipe2(fds, O_CLOEXEC) < 0) {
            goto os_error;
        }
        child_only[1] = fds[0];
        sources[0] = fds[0];
        self->in_fd = fds[1];
    }
    for (int i = 0; i < 2; i++) {
        int mode = modes[i + 1];
        if (mode == MODE_PIPE) {
            if (pipe2(fds, O_CLOEXEC) < 0) {
                goto os_error;
            }
            self->out_fd[i] = fds[0];
            self->held[i] = fds[1];
            sources[i + 1] = fds[1];
            self->chunks[i] = PyList_New(0);
            if (self->chunks[i] == NULL) {
                goto fail;
            }
        }
        else if (mode == MODE_DEVNULL) {
            sources[i + 1] = child_only[0];
        }
    }
    /* With our fds 0..2 closed, a new fd may be one of them, and dup2 onto 0..2
     * from 0..2 needs careful ordering: the Python path has it (EBADF: use it). */
    for (int i = 0; i < 3; i++) {
        if (sources[i] >= 0 && sources[i] <= 2) {
            errno = EBADF;
            goto os_error;
        }
    }
    if (modes[2] == MODE_STDOUT) {
        sources[2] = sources[1] >= 0 ? sources[1] : 1;
    }
    if (posix_spawn_file_actions_init(&actions) != 0) {
        goto os_error;
    }
    have_actions = 1;
    for (int i = 0; i < 3; i++) {
        if (sources[i] >= 0 && (error = posix_spawn_file_actions_adddup2(&actions, sources[i], i))) {
            errno = error;
            goto os_error;
        }
    }
    if ((error = posix_spawn_file_actions_addclosefrom_np(&actions, 3))) {
        errno = error;
        goto os_error;
    }

    pid_t pid;
    int use_path = search && strchr(argv[0], '/') == NULL;
    Py_BEGIN_ALLOW_THREADS
    if (use_path) {
        error = posix_spawnp(&pid, argv[0], &actions, &spawn_attr, argv, envp);
    }
    else {
        error = posix_spawn(&pid, argv[0], &actions, &spawn_attr, argv, envp);
    }
    Py_END_ALLOW_THREADS
    posix_spawn_file_actions_destroy(&actions);
    have_actions = 0;
    close_fd(&child_only[0]);
    close_fd(&child_only[1]);
    if (error) {
        errno = error;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyList_GET_ITEM(argv_keep, 0));
        goto fail;
    }
    self->pid = pid;

    /* From here on a child runs: on failure, kill its group and reap it. */
    self->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (self->pidfd < 0) {
        goto child_error;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        goto child_error;
    }
    if (add_watch(self, self->pidfd, EPOLLIN) < 0) {
        goto child_error;
    }
    self->pidfd_registered = 1;
    for (int i = 0; i < 2; i++) {
        if (self->out_fd[i] >= 0) {
            if (set_nonblocking(self->out_fd[i]) < 0 ||
                add_watch(self, self->out_fd[i], EPOLLIN) < 0) {
                goto child_error;
            }
            self->registered[i] = 1;
        }
    }
    if (self->in_fd >= 0) {
        if (input_obj == Py_None || PyBytes_GET_SIZE(input_obj) == 0) {
            close_fd(&self->in_fd); /* nothing to feed: EOF at once */
        }
        else {
            if (set_nonblocking(self->in_fd) < 0 || add_watch(self, self->in_fd, EPOLLOUT) < 0) {
                goto child_error;
            }
            Py_INCREF(input_obj);
            self->input = input_obj;
        }
    }
    result = (PyObject *)self;
    goto cleanup;

child_error:
    PyErr_SetFromErrno(PyExc_OSError);
    kill(-self->pid, SIGKILL);
    {
        int status;
        while (waitpid(self->pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
    self->reaped = 1;
    goto fail;
os_error:
    PyErr_SetFromErrno(PyExc_OSError);
fail:
    if (have_actions) {
        posix_spawn_file_actions_destroy(&actions);
    }
    close_fd(&child_only[0]);
    close_fd(&child_only[1]);
    core_close_all(self);
    Py_DECREF(self);
cleanup:
    Py_XDECREF(argv_seq);
    Py_XDECREF(argv_keep);
    Py_XDECREF(envp_seq);
    Py_XDECREF(envp_keep);
    PyMem_Free(argv);
    if (envp != environ) {
        PyMem_Free(envp);
    }
    return result;
}

/* -- moving data ------------------------------------------------------------- */

static void
unwatch(Core *self, int fd)
{
    if (self->epfd >= 0 && fd >= 0) {
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
    }
}

static void
close_stdin(Core *self)
{
    if (self->in_fd >= 0) {
        close_fd(&self->in_fd); /* also leaves the epoll set */
    }
    Py_CLEAR(self->input);
}

/* Append data[0:n] to output i, honouring the limit: 1 when the limit was hit
 * (and is enforced), -1 on a Python error, else 0. */
static int
keep(Core *self, int i, PyObject *data)
{
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (self->limit >= 0 && self->size[i] + n > self->limit) {
        Py_ssize_t room = self->limit - self->size[i];
        if (room > 0) {
            PyObject *part = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), room);
            if (part == NULL || PyList_Append(self->chunks[i], part) < 0) {
                Py_XDECREF(part);
                return -1;
            }
            Py_DECREF(part);
            self->size[i] = self->limit;
        }
        if (self->enforce_limit) {
            self->limit_hit = i;
            return 1;
        }
        return 0; /* stopping anyway: the rest is dropped */
    }
    if (PyList_Append(self->chunks[i], data) < 0) {
        return -1;
    }
    self->size[i] += n;
    return 0;
}

/* Read output i until it is empty (or READS_PER_TURN reads): 1 limit hit,
 * -1 error, 0 otherwise. */
static int
take(Core *self, int i)
{
    char small[SMALL_READ];
    int fd = self->out_fd[i];
    if (fd < 0 || self->eof[i]) {
        return 0;
    }
    for (int round = 0; round < READS_PER_TURN; round++) {
        PyObject *data;
        ssize_t got;
        if (!self->grown[i]) {
            got = read(fd, small, SMALL_READ);
            if (got > 0) {
                data = PyBytes_FromStringAndSize(small, got);
                if (data == NULL) {
                    return -1;
                }
            }
        }
        else {
            data = PyBytes_FromStringAndSize(NULL, READ_SIZE);
            if (data == NULL) {
                return -1;
            }
            got = read(fd, PyBytes_AS_STRING(data), READ_SIZE);
            if (got > 0 && got < READ_SIZE && _PyBytes_Resize(&data, got) < 0) {
                return -1;
            }
            if (got <= 0) {
                Py_DECREF(data);
            }
        }
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                return 0;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (got == 0) {
            self->eof[i] = 1;
            if (self->registered[i]) {
                unwatch(self, fd);
                self->registered[i] = 0;
            }
            return 0;
        }
        if (!self->grown[i] && got >= SMALL_READ) {
            /* The default pipe was full: a bigger one means fewer wake-ups. */
            fcntl(fd, F_SETPIPE_SZ, GROWN_PIPE_SIZE);
            self->grown[i] = 1;
        }
        int rc = keep(self, i, data);
        Py_DECREF(data);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static int
feed(Core *self)
{
    if (self->in_fd < 0 || self->input == NULL) {
        return 0;
    }
    Py_ssize_t left = PyBytes_GET_SIZE(self->input) - self->input_pos;
    ssize_t wrote = write(self->in_fd, PyBytes_AS_STRING(self->input) + self->input_pos, left);
    if (wrote < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            return 0;
        }
        if (errno != EPIPE && errno != ECONNRESET) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        wrote = left; /* the child stopped reading: fine, as in subprocess */
    }
    self->input_pos += wrote;
    if (self->input_pos >= PyBytes_GET_SIZE(self->input)) {
        close_stdin(self);
    }
    return 0;
}

static int
outputs_done(Core *self)
{
    for (int i = 0; i < 2; i++) {
        if (self->out_fd[i] >= 0 && !self->eof[i]) {
            return 0;
        }
    }
    return 1;
}

static int
state_bits(Core *self)
{
    return (self->exited ? S_EXITED : 0) | (outputs_done(self) ? S_OUTPUTS_DONE : 0);
}

static PyObject *
core_serve(Core *self, PyObject *Py_UNUSED(ignored))
{
    struct epoll_event events[4];
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    int n = epoll_wait(self->epfd, events, 4, 0);
    if (n < 0) {
        if (errno != EINTR) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        n = 0;
    }
    int bits = n == 0 ? S_IDLE : 0;
    for (int k = 0; k < n; k++) {
        int fd = events[k].data.fd;
        int rc = 0;
        if (fd == self->pidfd) {
            self->exited = 1;
            if (self->pidfd_registered) {
                unwatch(self, fd);
                self->pidfd_registered = 0;
            }
        }
        else if (fd == self->in_fd) {
            rc = feed(self);
        }
        else if (fd == self->out_fd[0]) {
            rc = take(self, 0);
        }
        else if (fd == self->out_fd[1]) {
            rc = take(self, 1);
        }
        if (rc < 0) {
            return NULL;
        }
        if (rc > 0) {
            bits |= S_LIMIT;
            break;
        }
    }
    return PyLong_FromLong(bits | state_bits(self));
}

static PyObject *
core_release(Core *self, PyObject *Py_UNUSED(ignored))
{
    close_fd(&self->held[0]);
    close_fd(&self->held[1]);
    Py_RETURN_NONE;
}

static PyObject *
core_close_stdin(Core *self, PyObject *Py_UNUSED(ignored))
{
    close_stdin(self);
    Py_RETURN_NONE;
}

/* -- the group and the exit -------------------------------------------------- */

static int
signal_group(Core *self, int sig)
{
    if (self->group_gone || self->pid <= 0) {
        return 0;
    }
    if (kill(-self->pid, sig) < 0) {
        if (errno == ESRCH) {
            self->group_gone = 1;
        }
        return 0;
    }
    return 1;
}

static PyObject *
core_signal(Core *self, PyObject *arg)
{
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(signal_group(self, (int)sig));
}

/* wait4(WNOHANG): 1 reaped now or before, 0 still running. */
static int
reap(Core *self)
{
    if (self->reaped) {
        return 1;
    }
    int status;
    pid_t got;
    do {
        got = wait4(self->pid, &status, WNOHANG, &self->ru);
    } while (got < 0 && errno == EINTR);
    if (got == 0) {
        return 0;
    }
    self->reaped = 1;
    if (got < 0) { /* somebody else reaped it: its status is lost */
        self->status = -1;
        memset(&self->ru, 0, sizeof(self->ru));
    }
    else {
        self->status = status;
    }
    close_fd(&self->pidfd);
    self->pidfd_registered = 0;
    /* A zombie leader pinned the group id; once reaped, the id may be reused
     * unless a member is left: probe. */
    if (!self->group_gone && kill(-self->pid, 0) < 0 && errno == ESRCH) {
        self->group_gone = 1;
    }
    return 1;
}

static PyObject *
core_reap(Core *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(reap(self));
}

static PyObject *
core_leader_exited(Core *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->exited && !self->reaped) {
        siginfo_t info;
        info.si_pid = 0;
        if (waitid(P_PID, self->pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid != 0) {
            self->exited = 1;
        }
    }
    return PyBool_FromLong(self->exited || self->reaped);
}

static PyObject *
core_finish(Core *self, PyObject *Py_UNUSED(ignored))
{
    close_fd(&self->held[0]);
    close_fd(&self->held[1]);
    for (int i = 0; i < 2; i++) {
        int rc = take(self, i);
        if (rc < 0) {
            return NULL;
        }
        if (rc > 0) {
            /* over the limit while reading the rest: the caller stops the group */
            return PyLong_FromLong(S_LIMIT | state_bits(self));
        }
    }
    if (outputs_done(self)) {
        signal_group(self, SIGKILL); /* members that hold no pipe */
        reap(self);
    }
    return PyLong_FromLong(state_bits(self));
}

/* -- results ----------------------------------------------------------------- */

static PyObject *
core_output(Core *self, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || i > 1) {
        PyErr_SetString(PyExc_IndexError, "output 0 (stdout) or 1 (stderr)");
        return NULL;
    }
    if (self->chunks[i] == NULL) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(self->chunks[i]);
    if (n == 0) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (n == 1) {
        PyObject *only = PyList_GET_ITEM(self->chunks[i], 0);
        Py_INCREF(only);
        return only;
    }
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL) {
        return NULL;
    }
    PyObject *joined = _PyBytes_Join(empty, self->chunks[i]);
    Py_DECREF(empty);
    if (joined != NULL) { /* keep one chunk: later calls are cheap */
        PyObject *list = PyList_New(1);
        if (list == NULL) {
            Py_DECREF(joined);
            return NULL;
        }
        Py_INCREF(joined);
        PyList_SET_ITEM(list, 0, joined);
        Py_SETREF(self->chunks[i], list);
    }
    return joined;
}

static PyObject *
core_returncode(Core *self, void *Py_UNUSED(closure))
{
    if (!self->reaped) {
        Py_RETURN_NONE;
    }
    int status = self->status;
    if (status == -1) {
        return PyLong_FromLong(255); /* lost: reaped elsewhere */
    }
    if (WIFSIGNALED(status)) {
        return PyLong_FromLong(-WTERMSIG(status));
    }
    return PyLong_FromLong(WEXITSTATUS(status));
}

static PyObject *
core_rusage(Core *self, void *Py_UNUSED(closure))
{
    if (!self->reaped || self->status == -1) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue(
        "ddL", (double)self->ru.ru_utime.tv_sec + self->ru.ru_utime.tv_usec * 1e-6,
        (double)self->ru.ru_stime.tv_sec + self->ru.ru_stime.tv_usec * 1e-6,
        (long long)self->ru.ru_maxrss * 1024); /* KiB on Linux */
}

static PyObject *
core_fileno(Core *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->epfd);
}

static PyObject *
core_close(Core *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->input);
    core_close_all(self);
    Py_RETURN_NONE;
}

static void
core_dealloc(Core *self)
{
    if (self->pid > 0 && !self->reaped) {
        /* Never leave a zombie behind (the caller always reaps; this is a net). */
        int status;
        kill(-self->pid, SIGKILL);
        while (waitpid(self->pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
    core_close_all(self);
    Py_XDECREF(self->input);
    Py_XDECREF(self->chunks[0]);
    Py_XDECREF(self->chunks[1]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
get_pid(Core *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->pid);
}

static PyObject *
get_limit_hit(Core *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->limit_hit);
}

static PyObject *
get_enforce_limit(Core *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->enforce_limit);
}

static int
set_enforce_limit(Core *self, PyObject *value, void *Py_UNUSED(closure))
{
    int on = value == NULL ? 0 : PyObject_IsTrue(value);
    if (on < 0) {
        return -1;
    }
    self->enforce_limit = (char)on;
    return 0;
}

static PyObject *
get_stdin_open(Core *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->in_fd >= 0);
}

static PyGetSetDef core_getset[] = {
    {"pid", (getter)get_pid, NULL, NULL, NULL},
    {"returncode", (getter)core_returncode, NULL, NULL, NULL},
    {"rusage", (getter)core_rusage, NULL, NULL, NULL},
    {"limit_hit", (getter)get_limit_hit, NULL, NULL, NULL},
    {"enforce_limit", (getter)get_enforce_limit, (setter)set_enforce_limit, NULL, NULL},
    {"stdin_open", (getter)get_stdin_open, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef core_methods[] = {
    {"fileno", (PyCFunction)core_fileno, METH_NOARGS, NULL},
    {"serve", (PyCFunction)core_serve, METH_NOARGS, NULL},
    {"finish", (PyCFunction)core_finish, METH_NOARGS, NULL},
    {"release", (PyCFunction)core_release, METH_NOARGS, NULL},
    {"close_stdin", (PyCFunction)core_close_stdin, METH_NOARGS, NULL},
    {"signal", (PyCFunction)core_signal, METH_O, NULL},
    {"reap", (PyCFunction)core_reap, METH_NOARGS, NULL},
    {"leader_exited", (PyCFunction)core_leader_exited, METH_NOARGS, NULL},
    {"output", (PyCFunction)core_output, METH_O, NULL},
    {"close", (PyCFunction)core_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aioproc._runcore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One run()'s child, pipes and epoll set (see the module comment).",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};

static struct PyModuleDef runcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aioproc._runcore",
    .m_doc = "run()'s system calls in C (see _runcore.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__runcore(void)
{
    if (PyType_Ready(&CoreType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&runcore_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(module, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddIntConstant(module, "EXITED", S_EXITED) < 0 ||
        PyModule_AddIntConstant(module, "OUTPUTS_DONE", S_OUTPUTS_DONE) < 0 ||
        PyModule_AddIntConstant(module, "LIMIT", S_LIMIT) < 0 ||
        PyModule_AddIntConstant(module, "IDLE", S_IDLE) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
