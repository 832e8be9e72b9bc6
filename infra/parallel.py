"""Many episodes at once, for actor.run_trials: batched for a local model, threaded for a server.

An episode is any object with `advance(completion)`, `done`, `traj` and `env`; `step(episodes)` asks
the backend for one completion per episode. When the backend, or an episode's env (its data source),
raises one of `errors`, the episodes it hit end void (their trajectory's `error` set), never as task
failures; any other exception is a bug and propagates.
"""

import collections
import concurrent.futures
import threading


class Book:
    """The bookkeeping shared by the worker threads: the results, a pool of idle envs, the episode log
    (one JSON line per finished trajectory, with `log_tags` first), and the count of backend failures
    in a row that stops new episodes (`abort` then holds the reason)."""

    def __init__(self, make_env, n: int, log_path, log_tags, max_errors_in_a_row: int):
        self.make_env, self.free_envs = make_env, [make_env()]
        self.env_name = self.free_envs[0].name
        self.results = [None] * n
        self.log_path, self.log_tags, self.max_errors = log_path, log_tags or {}, max_errors_in_a_row
        self.lock, self.in_a_row, self.abort = threading.Lock(), 0, None

    def __enter__(self):
        self.logf = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        return self

    def __exit__(self, *exc):
        if self.logf:
            self.logf.close()

    def take_env(self):
        """An idle env, else a new one (made outside the lock: building an env takes time)."""
        with self.lock:
            env = self.free_envs.pop() if self.free_envs else None
        return env if env is not None else self.make_env()

    def finish(self, j: int, traj, env=None):
        with self.lock:
            self.results[j] = traj
            if env is not None:
                self.free_envs.append(env)
            if self.logf:
                self.logf.write(traj.to_json(**self.log_tags) + "\n")
                self.logf.flush()
            self.in_a_row = self.in_a_row + 1 if traj.error else 0
            if self.in_a_row >= self.max_errors and self.abort is None:
                self.abort = f"not started: {self.max_errors} episodes in a row failed; last: {traj.error}"


def run_batched(book: Book, jobs, new_episode, void, step, concurrency: int, errors=(Exception,)):
    """All live episodes advance together: one step() call (one batched generate) per ReAct step."""
    pending, live = collections.deque(jobs), []
    while pending or live:
        while pending and len(live) < concurrency and book.abort is None:
            j = pending.popleft()
            live.append((j, new_episode(j)))
        if not live:  # aborted
            j = pending.popleft()
            book.finish(j, void(j))
            continue
        try:
            outs = step([ep for _, ep in live])
        except errors as e:
            for _, ep in live:
                ep.traj.error, ep.done = str(e), True
        else:
            for (_, ep), out in zip(live, outs, strict=True):
                try:
                    ep.advance(out)
                except errors as e:  # the env's data source failed: this episode alone is void
                    ep.traj.error, ep.done = str(e), True
        for j, ep in [x for x in live if x[1].done]:
            book.finish(j, ep.traj, ep.env)
        live = [x for x in live if not x[1].done]


def run_threaded(book: Book, jobs, new_episode, void, step, concurrency: int, errors=(Exception,)):
    """One episode per thread, `concurrency` threads: for backends that serve requests concurrently."""

    def work(j):
        if book.abort is not None:
            return book.finish(j, void(j))
        ep = new_episode(j)
        try:
            while not ep.done:
                ep.advance(step([ep])[0])
        except errors as e:
            ep.traj.error = str(e)
        book.finish(j, ep.traj, ep.env)

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(work, j) for j in jobs]:
            f.result()  # re-raise bugs here
