"""Process-wide host state: what every VM of one Envoy process shares.

Envoy keeps shared data and shared queues per `vm_id` for the whole process
(one mutex; CAS works across worker threads), and stats by name for the whole
process. A test that models several VMs (workers) of one process creates one
SharedStore and passes it to each HostEmulator.

Semantics follow proxy-wasm-cpp-host's shared_data.cc / shared_queue.cc:
  - get of an absent key: NotFound;
  - set with cas != 0 on an existing key whose cas differs: CasMismatch; on an
    absent key the cas is ignored; every successful set gets a new cas;
  - queues: register returns the existing id for (vm_id, name); enqueue to an
    unknown id: NotFound; dequeue of an empty queue: Empty; the owner VM's root
    context gets proxy_on_queue_ready (after its current callback returns).
"""

import collections
import threading

from proxywasm import abi_table


class SharedStore:
    def __init__(self):
        self._lock = threading.RLock()
        self._data = {}       # (vm_id, key) -> (value, cas)
        self._next_cas = 1
        self._queues = {}     # queue id -> Queue
        self._queue_ids = {}  # (vm_id, name) -> queue id
        self._next_queue = 1
        self.metrics = {}     # name -> Metric, process-wide like Envoy's stats
        self._races_lost = {}  # key prefix -> compare-and-swap writes still to lose

    # --- shared data ---------------------------------------------------------

    def get(self, vm_id, key):
        """(status, value, cas)."""
        with self._lock:
            entry = self._data.get((vm_id, key))
        if entry is None:
            return abi_table.NOT_FOUND, b"", 0
        return abi_table.OK, entry[0], entry[1]

    def set(self, vm_id, key, value, cas):
        with self._lock:
            entry = self._data.get((vm_id, key))
            if entry is not None and cas and (cas != entry[1] or self._loses_race(key)):
                return abi_table.CAS_MISMATCH
            self._data[(vm_id, key)] = (bytes(value), self._cas())
        return abi_table.OK

    def lose_cas_races(self, key_prefix, count):
        """The next `count` compare-and-swap writes to keys starting with
        `key_prefix` answer CasMismatch, as if another worker won each race."""
        with self._lock:
            self._races_lost[key_prefix] = count

    def _loses_race(self, key):
        key = key.decode() if isinstance(key, bytes) else key
        for prefix, left in self._races_lost.items():
            if left > 0 and key.startswith(prefix):
                self._races_lost[prefix] = left - 1
                return True
        return False

    def _cas(self):
        cas = self._next_cas
        self._next_cas = (self._next_cas + 1) & 0xFFFFFFFF or 1
        return cas

    def data(self, vm_id=""):
        """{key: value} of one vm_id, for assertions."""
        with self._lock:
            return {k: v for (vid, k), (v, _) in self._data.items() if vid == vm_id}

    # --- shared queues -------------------------------------------------------

    def register_queue(self, vm_id, name, owner, root_context_id):
        """The queue's id; `owner` (a HostEmulator) is told when data arrives."""
        with self._lock:
            queue_id = self._queue_ids.get((vm_id, name))
            if queue_id is None:
                queue_id = self._next_queue
                self._next_queue += 1
                self._queue_ids[(vm_id, name)] = queue_id
                self._queues[queue_id] = Queue(vm_id, name)
            queue = self._queues[queue_id]
            queue.owner, queue.root_context_id = owner, root_context_id
        return queue_id

    def resolve_queue(self, vm_id, name):
        with self._lock:
            return self._queue_ids.get((vm_id, name))

    def enqueue(self, queue_id, data):
        with self._lock:
            queue = self._queues.get(queue_id)
            if queue is None:
                return abi_table.NOT_FOUND
            queue.items.append(bytes(data))
            owner, root = queue.owner, queue.root_context_id
        if owner is not None:
            owner.queue_ready(root, queue_id)
        return abi_table.OK

    def dequeue(self, queue_id):
        """(status, data)."""
        with self._lock:
            queue = self._queues.get(queue_id)
            if queue is None:
                return abi_table.NOT_FOUND, b""
            if not queue.items:
                return abi_table.EMPTY, b""
            return abi_table.OK, queue.items.popleft()

    def queue_items(self, vm_id, name):
        """What a queue holds now, for assertions."""
        with self._lock:
            queue_id = self._queue_ids.get((vm_id, name))
            return list(self._queues[queue_id].items) if queue_id else []

    # --- metrics -------------------------------------------------------------

    def metric(self, metric_type, name):
        """The process-wide metric `name` (created on first definition)."""
        with self._lock:
            metric = self.metrics.get(name)
            if metric is None:
                metric = self.metrics[name] = Metric(metric_type, name)
            return metric


class Queue:
    def __init__(self, vm_id, name):
        self.vm_id = vm_id
        self.name = name
        self.items = collections.deque()
        self.owner = None
        self.root_context_id = 0


class Metric:
    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2

    def __init__(self, metric_type, name):
        self.type = metric_type
        self.name = name
        self.value = 0
        self.samples = []  # histogram values

    def __repr__(self):
        kind = ("counter", "gauge", "histogram")[self.type]
        shown = self.samples if self.type == self.HISTOGRAM else self.value
        return f"<{kind} {self.name}={shown}>"
