# flinknet._core.engine: the native engine (an epoll I/O thread without the GIL that reads and
# writes both client-role and server-role connections) and the native queues it shares with the
# task threads.
#
# Ownership and locking rules (the engine's contract; FLINKNET_DEBUG builds assert them):
#
# * fn_signal (a gate's doorbell) is owned by its GateSignal object. `lock` guards every field.
#   Any thread may ring it (fn_signal_ready, fn_signal_notify) without the GIL; a task thread waits
#   on `cond` with the GIL released -- or, with a GIL hold set (GateSignal.set_gil_hold: a gate
#   whose every channel has a native queue, so its data arrives from the I/O thread without the
#   GIL), first for at most the hold with the GIL kept, while Python took the GIL back slowly
#   after the last wait and that wait was shorter than the hold (see GateSignal.wait). A thread
#   that needs the GIL to ring (notify: a failure, a close, an event's hand-over) rings at the
#   latest when the hold ends. A channel index is in `ready` at most once (`is_ready`).
#   An event loop waits on `wake_fd` instead (an eventfd the loop selects on): whoever marks a
#   channel ready, or notifies, while `fd_armed` writes it, under `lock` and without the GIL,
#   disarms it and sets `fd_rung`; whoever reads it (clear_fd, arm_fd) clears `fd_rung`.
#   Only GIL holders take from `ready` (drain, pop, poll_data: the gate's reader); other threads
#   only append (requeue appends too, from the reader). poll_data (the gate's fast lane) takes a buffer from the first ready channel and
#   moves that channel to the back of `ready` (it has more) or out of it, holding the channel's
#   `lock` and then this `lock`: the one nesting of the two, in that order (an arrival pushes
#   under the channel's lock and marks the channel ready after releasing it).
#
# * fn_channel (a remote channel's credit slots and received queue) is owned by its ChannelQueue
#   object; `lock` guards every field below it. The I/O thread touches a channel only while the
#   channel is registered with one of its connections (the connection's map holds a strong
#   reference to the ChannelQueue, taken and dropped with the GIL), so the struct outlives every
#   native use of it.
#   - Slots: slot ids index `slot_addr`/`slot_cap`; a slot is free (in `free_slots`), receiving
#     (popped by the I/O thread, which writes into it without the lock), queued (in `ring`) or
#     handed out (a Buffer a task thread owns). Only GIL holders add or remove slot ids.
#   - Ring entries of kind ENTRY_OBJECT carry an owned PyObject* (a Buffer pushed by Python code);
#     only GIL holders push or pop them; the I/O thread never reads `obj`.
#   - `expected_seq` is checked and advanced under `lock` by whoever pushes.
#   - Credit: a freed slot adds to `unannounced`. A registered channel announces it natively
#     only when its ring is empty (at that put, or at the poll that empties the ring): credit
#     freed while the task still has received entries to take waits for them and goes out as
#     one AddCredit. `in_credit_list` says an announcement is under way (at most one). The
#     gate's lane poll (GateSignal.poll_data) that empties a ring with credit waiting does not
#     write it: it lists the credit (the credit timer armed) and pushes the channel on the
#     gate's `deferred` stack (under the signal's `lock`, inside the channel's, the one nesting
#     of the two), so the gate's next flush writes it after the buffer's records are handed
#     out, as for a deferred put below.
#   - Deferred credit: on a thread whose `fn_defer_credit` is set (a record reader reading a
#     buffer it took through the lane), a put with the ring empty lists the credit (as with
#     entries queued: the credit timer writes it within _CREDIT_DELAY_NS at the latest) and
#     pushes the channel's index on its gate's `deferred` stack (under the signal's `lock`,
#     taken after the channel's is released). The gate pops them at the lane's next poll and
#     before a wait (GateSignal.flush_credit, GIL) and writes each still-listed channel's
#     connection list, reaching the ChannelQueue through the gate's list of queues (never
#     through a stored pointer): so the AddCredit's `send` falls after the records are handed
#     out.
#
# * fn_conn (one TCP connection) is owned by the engine's I/O thread once registered: its read
#   state and receiver map are touched by that thread alone. `out_lock` guards `out` (frames any
#   thread queues for writing) and `credit_list` (channels with unannounced credit). The socket
#   fd is owned by the Python socket object the NativeConnection keeps; the I/O thread only
#   reads/writes it and never closes it.
#   - Inline AddCredit: a GIL holder announcing credit while nothing is queued on the
#     connection (`out` and the credit list empty) writes the AddCredit itself, one
#     non-blocking `send` (no wake-up of the I/O thread, which is a hop of tens of µs). It holds
#     `out_lock`, then `send_lock` (a trylock: if busy, the I/O thread writes the credit) across
#     the send, and sends only while the channel is registered with this connection (checked
#     under the channel's `lock`, held for the check alone, so the I/O thread delivering the
#     next buffer never waits for the syscall): the connection's removal unregisters every
#     channel under its lock, then takes `send_lock` (_drop_wire), and only then may the socket
#     close, so the fd is this connection's throughout. On a client-role connection nothing
#     else nests `send_lock` with `out_lock`. A short or failed send leaves the rest in `out`
#     for the I/O thread (which meets the error itself and fails the connection).
#
# * fn_outq (one reader's queue of buffers to send: the native part of a pipelined subpartition
#   served over a server-role connection) is owned by its OutputQueue object; `lock` guards every
#   field. Entries carry an owned PyObject* (a read-only Buffer slice) pushed by a GIL holder (the
#   task thread); the I/O thread pops them without the GIL, writes their bytes straight from the
#   segment and hands the object to the engine's `done` list, whose reaper (a thread that takes the
#   GIL once per batch) or a task thread recycles it. The I/O thread touches an fn_outq only while
#   it is registered with one of its connections (the map holds a strong reference). `in_ready`
#   says the queue is on its connection's ready list (at most once); lock order: a connection's
#   `out_lock` before an fn_outq's lock, nested only where a queue joins the ready ring
#   (_outq_enqueue checks there that the queue is still registered); never the other way.
#
# * A server-role fn_conn's map holds fn_outq pointers (cast to fn_channel*) instead of channels;
#   `ready` (guarded by `out_lock`) is its FIFO of readers that can send, served round-robin; the
#   `wire` queue of frames being written, and the socket's writes, are guarded by `send_lock`:
#   the I/O thread holds it while it flushes the connection and when it drops the wire at the
#   removal; a GIL holder that pushes a small frame into an idle connection (nothing on the
#   wire, in `out` or on the ready list) may take it with a trylock and send the frame itself
#   (write-through), leaving any unsent rest on the wire for the I/O thread. Lock order:
#   `send_lock` before `out_lock` and any queue's lock.
#
# * The I/O thread takes the GIL only for the control path: frames it hands to Python (every frame
#   but a plain data BufferResponse for a registered channel or an AddCredit for a registered
#   output queue), connection failures, an armed gate availability callback, and dropping
#   references on (un)registration. The reaper thread takes it once per batch of written buffers.
#   No function the I/O loop calls on every turn may have a Python-object local: Cython takes
#   the GIL at each exit of such a function to release it (_run_commands once did, so both I/O
#   threads queued for the GIL behind the task threads on every turn). What needs the GIL lives
#   in a function of its own, called only when there is such work (_drop_command_owners).
#   tests/core/test_engine.py receives frame after frame while a Python thread holds the GIL.
#
# * The done list (buffers the I/O thread wrote, owned references; `done_lock` guards it and
#   `hungry`, `poke_seq`) is taken whole, with the GIL, by the reaper thread or by a task thread
#   whose pool ran dry (ReceiveEngine.reclaim: the engine is the SegmentReclaimer of the pools
#   of its environment's partitions). Such a thread counts itself in `hungry` while it waits on
#   `hungry_cond` with the GIL released, and takes the list in the same critical section that
#   ends its wait. The I/O thread adding to the list wakes the hungry threads (all: any of them
#   may take it) instead of the reaper, else the reaper if the list was empty: so a non-empty
#   list always has a thread woken to take it. A pool turning available on another path pokes
#   (`poke_seq`, with the GIL). done_lock is never held while waiting for the GIL.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from flinknet._core.buffer cimport BufferRecycler
from flinknet._core.memory cimport MemorySegment
from flinknet._core.pool cimport SegmentReclaimer


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass


cdef enum:
    ENTRY_SLOT = 1
    ENTRY_OBJECT = 2


cdef struct fn_entry:
    int kind
    int slot
    int32_t size
    int data_type
    int32_t seq
    int32_t backlog
    void *obj


cdef struct fn_signal:
    pthread_mutex_t lock
    pthread_cond_t cond
    int capacity            # channels of the gate
    int *ready              # FIFO of channel indexes (capacity entries)
    char *is_ready
    int head
    int count
    bint pending            # rung by Python code (fn_signal_notify) since the last wait
    bint armed              # someone waits on the gate's availability future: call back
    bint fd_armed           # an event loop waits on wake_fd: write it at the next ready channel
                            # or notify
    bint fd_rung            # wake_fd was written and not read since (arm_fd reads it only then)
    int wake_fd             # the gate's eventfd for event loops (-1 until asked for); owned by
                            # the GateSignal, written under `lock`, closed only in its dealloc
    int waiters
    void *owner             # the GateSignal (PyObject*), for the armed callback (GIL)
    # Channels whose credit a reader's read deferred (fn_defer_credit): listed on their
    # connection (the I/O thread's credit timer writes it at the latest), written by the
    # gate at the lane's next poll or a wait (GateSignal.flush_credit). A stack of indexes
    # (capacity entries, each at most once: is_deferred), under `lock`.
    int *deferred
    char *is_deferred
    int num_deferred


cdef struct fn_channel:
    pthread_mutex_t lock
    int index               # the channel's index in its gate
    fn_signal *signal       # the gate's doorbell (kept alive by the ChannelQueue)
    # slots
    int slot_capacity
    char **slot_addr
    int32_t *slot_cap
    int *free_slots
    int num_free
    # received queue (ring)
    fn_entry *ring
    int ring_capacity
    int head
    int count
    int num_priority        # priority events at the front of the ring (pushed by GIL holders)
    int64_t queued_bytes
    int32_t expected_seq
    int unannounced
    bint requested          # the PartitionRequest went out: credit is announced by AddCredit
    bint released
    bint in_credit_list
    void *conn              # fn_conn* the channel is registered with (NULL if none)
    char receiver_id[16]
    int64_t buffers_received
    int64_t bytes_received
    int receiving           # slots the I/O thread is writing into (0 or 1)
    void *owner             # the ChannelQueue (PyObject*); alive while the struct is
    # The sender has a backlog and every slot is used: the I/O thread asks Python (with the
    # GIL) for floating buffers once per such stall; a slot added ends the stall.
    bint stall_notified
    bint floating_blocked   # the gate pool is empty: no use asking until it offers one
    # The sender's backlog as the newest arrival reported it (a received buffer or a
    # BacklogAnnouncement, in arrival order); -1 before the first. What the task acts on when
    # it takes a buffer: that buffer's own figure may be older than an arrival after it.
    int32_t latest_backlog


cdef struct fn_oentry:
    void *obj               # the Buffer (PyObject*, owned)
    char *data
    int32_t size
    int data_type
    int flags               # data_type_flags(data_type)
    void *root              # the NetworkBuffer owning the memory (a slice's parent; borrowed)


cdef struct fn_outq:
    pthread_mutex_t lock
    fn_oentry *ring
    int ring_capacity
    int head
    int count
    int num_priority        # priority events at the head of the ring
    int backlog             # data buffers in the ring
    int32_t seq             # sequence number of the next buffer sent
    int credit
    bint blocked            # an upstream-blocking event went out; ResumeConsumption unblocks
    bint released
    bint in_ready
    void *conn              # fn_conn* the queue is registered with (NULL if none)
    char receiver_id[16]
    int32_t subpartition
    void *owner             # the OutputQueue (PyObject*)
    int64_t buffers_sent
    int64_t bytes_sent


cdef struct fn_wentry:
    char hdr[48]
    int32_t size            # payload bytes after the 47-byte header
    int32_t off             # bytes of header + payload written so far
    char *data
    void *obj               # the Buffer to recycle once written (owned), or NULL


cdef enum:
    _HDR = 9
    _BR_HDR = 38
    _STAGING = 16384

cdef struct fn_map_entry:
    uint64_t k0
    uint64_t k1
    fn_channel *ch
    void *obj            # ChannelQueue (PyObject*, a strong reference)


cdef enum:
    # read states
    RS_HEADER = 0
    RS_BR_HEADER = 1
    RS_SLOT = 2          # payload into a channel's slot
    RS_FRAME = 3         # a whole frame for Python
    RS_FAILED = 4


cdef struct fn_conn:
    int fd
    void *owner          # the NativeConnection (PyObject*): alive while registered
    int64_t max_frame_length
    int64_t max_buffer_size
    # read state (I/O thread)
    int state
    char staging[_STAGING]
    int s_start
    int s_end
    char hdr[_HDR + _BR_HDR]
    int hdr_have
    int32_t frame_length
    fn_channel *target
    int slot
    char *dst            # the slot's memory (read under the channel's lock)
    int32_t br_size
    int32_t br_seq
    int32_t br_backlog
    int br_type
    int32_t have
    char *frame
    # receiver map (I/O thread)
    fn_map_entry *map
    int map_capacity
    int map_count
    # writes: out_lock guards out* and the credit list
    pthread_mutex_t out_lock
    char *out
    int64_t out_len
    int64_t out_cap
    int64_t max_out
    fn_channel **credit
    int credit_len
    int credit_cap
    bint want_write      # EPOLLOUT registered
    bint removed
    bint failed
    void *engine         # fn_engine*
    int64_t frames_native
    int64_t frames_python
    int64_t bytes_in
    # server role
    bint server
    int hdr_need         # header bytes to collect in RS_BR_HEADER
    fn_outq **ready      # out_lock: ring of queues that can send
    int ready_head
    int ready_len
    int ready_cap
    bint write_scheduled # out_lock: the I/O thread will flush this connection
    pthread_mutex_t send_lock  # server role: held by whoever writes the socket and `wire`;
                               # client role: by an inline AddCredit's send (and _drop_wire)
    fn_wentry *wire      # send_lock: frames being written, in order
    int wire_head
    int wire_len
    int wire_cap
    int64_t wire_bytes
    int64_t frames_sent
    int64_t bytes_out


cdef enum:
    CMD_ADD_CONN = 1
    CMD_REMOVE_CONN = 2
    CMD_REGISTER = 3
    CMD_UNREGISTER = 4
    CMD_REGISTER_OUT = 5
    CMD_UNREGISTER_OUT = 6


cdef struct fn_cmd:
    int op
    fn_conn *conn
    fn_channel *ch
    void *obj


cdef struct fn_engine:
    int epfd
    int efd
    pthread_mutex_t lock      # guards cmds, writes, stop, tfd, timer_armed, deferred
    fn_cmd *cmds
    int num_cmds
    int cap_cmds
    fn_conn **writes          # connections with something to write (flushed every iteration);
                              # adding one wakes the I/O thread (efd) unless the adder is that
                              # thread handling its events (fn_io_handling, a thread-local): it
                              # takes the writes later in the same iteration
    int num_writes
    int cap_writes
    bint stop
    int tfd                   # the credit timer (a timerfd): wakes the I/O thread for writes
                              # listed without waking it (_defer_write); closed under `lock`
    bint timer_armed          # `lock`: the timer is set and has not fired yet
    fn_conn **deferred        # `lock`: connections to flush when the timer fires
    int num_deferred
    int cap_deferred
    fn_conn **conns           # I/O thread only
    int num_conns
    int cap_conns
    # buffers written (owned PyObject*) waiting to be recycled with the GIL; done_lock guards
    pthread_mutex_t done_lock
    pthread_cond_t done_cond
    void **done
    int num_done
    int cap_done
    bint reaper_stop
    pthread_cond_t hungry_cond   # task threads waiting in reclaim() for the done list or a poke
    int hungry                   # how many wait there
    uint64_t poke_seq            # bumped by poke(): a pool turned available or was destroyed
    int64_t reclaimed            # buffers recycled by reclaim() on task threads (statistics)
    int64_t reclaim_timeouts     # waits in reclaim() that ended by their timeout (statistics)


cdef class GateSignal:
    cdef fn_signal s
    cdef object _callback
    cdef bint _init_done
    # The GIL hold of `wait` (set_gil_hold): read and written only by a waiting thread, with the
    # GIL (never inside its `nogil` section), so the GIL is their lock.
    cdef double _hold           # the longest a wait keeps the GIL (s); 0: never
    cdef bint _contended        # the last wait that gave the GIL away got it back slowly
    cdef double _last_wait      # how long the last wait waited for its wake-up (s)
    cdef unsigned long long _held   # waits that kept the GIL and were woken within the hold

    cdef void _call_back_nogil(self) noexcept nogil
    cdef bint _wait_holding(self, double hold)


cdef class ChannelQueue:
    cdef fn_channel c
    cdef bint _init_done
    cdef GateSignal _signal
    # Python side of the slots (GIL): slot id -> MemorySegment (exclusive) or NetworkBuffer
    # (floating, from the gate pool); None for an unused id. _slot_recyclers: the slot's
    # _SlotRecycler (exclusive) or _FloatingRecycler (floating): buffers handed out over a slot's
    # segment come back through it.
    cdef list _slot_objects
    cdef list _slot_recyclers
    cdef list _unused_ids
    cdef int _num_exclusive
    # Free slots the sender's backlog asks for: above it, a recycled exclusive slot replaces a
    # free floating one, which goes back to the gate pool (Flink's BufferManager).
    cdef int _required
    cdef object _on_exclusive_free     # callable(segment) when released: give it back
    cdef object _exclusive_owner       # the owner object passed to recycle callbacks
    cdef object _backlog_callback      # callable(backlog): the sender's backlog needs floating

    cdef int _new_slot(self, object owner, MemorySegment segment, BufferRecycler recycler) except -1
    cdef void _forget_slot(self, int slot)
    cdef object _hand_out(self, int slot, int data_type, int size)
    cdef _give_back(self, list buffers, list free_slots)
    cdef int _push_object(self, object buffer, int seq, int backlog, bint priority=*, bint announcement=*) except -1
    cdef object _wrap(self, fn_entry *e)
    cdef void _announce_listed(self, bint idle_only)
    cdef int _recycle_slot(self, int slot) except -1
    cdef int _recycle_floating(self, int slot) except -1


cdef class OutputQueue:
    cdef fn_outq q
    cdef bint _init_done


cdef class NativeConnection:
    cdef fn_conn *c
    cdef ReceiveEngine _engine
    cdef object _sock
    cdef object handler
    cdef bint _added


cdef class ReceiveEngine(SegmentReclaimer):
    cdef fn_engine e
    cdef object _thread
    cdef object _reaper
    cdef bint _closed
    cdef bint _init_done

    cdef int _command(self, int op, fn_conn *conn, fn_channel *ch, void *obj) except? -1


# Put a channel with fresh credit on its connection's credit list and have it written (soon,
# or now; a GIL holder, without holding the GIL's lock order beyond `out_lock` -> channel lock).
cdef int _announce_native(fn_channel *c, void *conn, int how) noexcept nogil
