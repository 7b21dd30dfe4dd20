// The Engine's writer thread (engine.h): drains the queued commands, decides them
// and the tick, commits all their events in one synced append (group commit), then
// publishes them, answers the callers and hands the side effects of durable events
// (container launches and terminations) to the reactor thread.
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine_internal.h"
#include "engine/event_types.h"
#include "engine/processor.h"

namespace epoch::engine {

using internal::EvolveKnownGood;

void Engine::WriterLoop() {
  const EngineConfig& cfg = options_.config;
  TimePoint next_tick = clock_->Now();
  while (true) {
    std::vector<std::unique_ptr<Pending>> group;
    {
      // Until a command comes or the next tick is due on clock_: a real-time wait for
      // a clock that follows the real one, a wait for its next move for a ManualClock
      // (whose moves signal queue_cv_, under queue_mu_; see Lead).
      MutexLock lock(&queue_mu_);
      while (queue_.empty() && !stopping_) {
        TimePoint now = clock_->Now();
        if (now >= next_tick) break;
        if (clock_->Manual()) {
          queue_cv_.Wait(&queue_mu_);
        } else {
          queue_cv_.WaitUntil(&queue_mu_, std::chrono::steady_clock::now() + (next_tick - now));
        }
      }
      if (stopping_) break;
      while (!queue_.empty() && group.size() < options_.max_group) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    // A write of the store's own failed (a snapshot, a RocksDB flush that met a full
    // disk): stop before deciding anything, without waiting for an append to fail.
    if (Status fault = store_->WriteFailure(); !fault.ok()) {
      FailOnStorage(fault);
      RefuseAfterStorageFault(group);
      break;
    }
    TimePoint now = clock_->Now();
    Processor proc(&working_, DecideContext{now, &cfg, &files_, &credentials_, working_archive_},
                   epoch_);
    std::vector<std::optional<Result<CommandResult>>> results(group.size());
    for (size_t i = 0; i < group.size(); ++i) {
      stats_.commands++;
      results[i] = proc.Apply(group[i]->command);
      if (!results[i]->ok()) stats_.rejected++;
    }
    const bool ticked = now >= next_tick;
    if (ticked) {
      // An input's digest became known: the runs waiting for one may go on.
      if (inputs_hashed_.exchange(false)) {
        for (const auto& [id, r] : working_.runs) {
          if (!IsTerminal(r.phase)) proc.Touch(id);
        }
      }
      Tick tick;
      if (options_.start_pool) tick.expired = ExpiredLeases(now);
      {
        MutexLock lock(&watch_mu_);
        tick.queued = queued_seen_;
      }
      std::vector<Event> tick_events = OnTick(
          working_, tick, DecideContext{now, &cfg, &files_, &credentials_, working_archive_});
      if (!options_.start_pool) {
        std::erase_if(tick_events,
                      [](const Event& e) { return e.type == ev::kContainerRequested; });
      }
      proc.Record(std::move(tick_events));
      next_tick = now + cfg.tick;
      if (options_.start_pool) MaybeWatch(now);
    }
    proc.Settle();
    std::vector<RecordedEvent>& recorded = proc.recorded();

    uint64_t position = working_.head;
    if (!recorded.empty()) {
      storage::AppendBatch ab;
      ab.time = FormatTime(recorded.front().time);
      ab.epoch = epoch_;
      for (auto& e : recorded) {
        if (ab.appends.empty() || ab.appends.back().stream != e.stream) {
          storage::StreamAppend sa;
          sa.stream = e.stream;
          sa.expected_version =
              e.type == ev::kRunSubmitted ? storage::kNoStream : storage::kAnyVersion;
          ab.appends.push_back(std::move(sa));
        }
        ab.appends.back().events.push_back(
            storage::NewEvent{e.type, ev::CurrentVersion(e.type), e.actor, CanonicalDump(e.data)});
        // The idempotency family is a second, unique index of the keys: a key
        // written twice would fail the whole append instead of doubling a run.
        std::string key = e.data.value("idempotency_key", "");
        if (!key.empty() && e.type == ev::kRunSubmitted) {
          ab.idempotency.push_back(
              {storage::IdempotencyRecordKey(e.data.value("tenant", "default"), key),
               e.data.value("run", "")});
        } else if (!key.empty() && e.type == ev::kWorkflowRegistered) {
          ab.idempotency.push_back(
              {storage::IdempotencyRecordKey(e.data.value("tenant", "default"), key) +
                   std::string(1, '\0') + "workflow",
               e.data.value("name", "") + "@" + std::to_string(e.data.value("version", 0))});
        }
      }
      // The runs this group folded or unfolded: their records and index keys commit
      // with the events that caused them (archive.h).
      if (recording_) ab.read_model = recording_->TakeWrites();
      TimePoint t0 = clock_->Now();
      auto res = store_->Append(std::move(ab));
      int64_t lat = (clock_->Now() - t0).count();
      int b = 0;
      while (b < EngineStats::kBuckets && lat > EngineStats::kBoundsUs[b]) ++b;
      stats_.latency_buckets[b]++;
      stats_.latency_sum_us += static_cast<uint64_t>(std::max<int64_t>(lat, 0));
      stats_.latency_count++;
      if (!res.ok() && res.status().code() == StatusCode::kFailedPrecondition) {
        // Fenced: a newer leader has claimed the store. Nothing was written.
        StepDown(res.status().message());
        for (auto& p : group) {
          p->promise.set_value(Unavailable("this master was deposed: " + res.status().message()));
        }
        {
          MutexLock lock(&queue_mu_);
          stopping_ = true;
          for (auto& p : queue_) p->promise.set_value(Unavailable("this master was deposed"));
          queue_.clear();
        }
        break;
      }
      if (!res.ok() || res->first_position != recorded.front().position) {
        // Nothing of the group is acknowledged: its events may or may not be durable
        // (a restart replays what is), and the working state that holds them is dropped.
        Status st = res.ok() ? Internal("append landed at an unexpected position") : res.status();
        FailOnStorage(st);
        RefuseAfterStorageFault(group);
        break;
      }
      stats_.commits++;
      stats_.events_appended += recorded.size();
      {
        WriterLock lock(&published_mu_);
        for (const auto& r : recorded) EvolveKnownGood(published_, r, reading_.get());
      }
      // After publishing: the snapshot thread copies the published state, which must
      // hold the group that made the snapshot due (before, it could copy the state of
      // the previous group and the next trigger came only snapshotEvery events later).
      if (options_.snapshot_every > 0 &&
          recorded.back().position - last_snapshot_ >= options_.snapshot_every) {
        last_snapshot_ = recorded.back().position;
        {
          MutexLock lock(&snapshot_mu_);
          snapshot_due_ = true;
        }
        snapshot_cv_.Signal();
      }
      {
        MutexLock lock(&change_mu_);
        generation_++;
      }
      change_cv_.SignalAll();
      // Reactors: side effects of durable events.
      for (const auto& r : recorded) {
        if (r.type == ev::kContainerRequested && backend_) {
          ContainerSpec spec;
          spec.id = r.data.value("container", "");
          const Json& s = r.data.value("spec", Json::object());
          spec.cpu_millis = s.value("cpu_millis", int64_t{1000});
          spec.memory_bytes = s.value("memory_bytes", int64_t{0});
          spec.gpus = s.value("gpus", 0);
          spec.master_url = options_.advertise_url;
          spec.data_dir = cfg.data_dir;
          spec.env = options_.agent_env;
          std::optional<std::string> secret = credentials_.Take(spec.id);
          if (!secret) {
            // Decided with no mint (a test of the core): the agent could never
            // authenticate, so it is not started.
            spdlog::error("container {} has no credential minted by this master; not launched",
                          spec.id);
            continue;
          }
          spec.credential = std::move(*secret);
          PostReactor([this, spec] {
            auto h = backend_->Launch(spec);
            ContainerLaunchResult lr;
            lr.container = spec.id;
            lr.ok = h.ok();
            if (h.ok())
              lr.handle = *h;
            else
              lr.error = h.status().message();
            lr.unschedulable = !h.ok() && h.status().code() == StatusCode::kResourceExhausted;
            if (!h.ok()) spdlog::error("launching container {} failed: {}", spec.id, lr.error);
            (void)Execute(lr);
          });
        } else if ((r.type == ev::kContainerLost || r.type == ev::kContainerReleased) && backend_) {
          std::string id = r.data.value("container", "");
          auto it = working_.containers.find(id);
          std::string handle = it != working_.containers.end() ? it->second.handle : "";
          if (!handle.empty()) {
            PostReactor([this, id, handle] {
              Status st = backend_->Terminate(id, handle);
              if (!st.ok()) spdlog::warn("terminating container {}: {}", id, st.ToString());
            });
          }
        }
      }
    }
    for (size_t i = 0; i < group.size(); ++i) {
      if (results[i]->ok()) (*results[i])->position = position;
      group[i]->promise.set_value(std::move(*results[i]));
    }
    if (ticked) {
      {
        MutexLock lock(&change_mu_);
        last_tick_ = now;
      }
      change_cv_.SignalAll();
    }
  }
  // Drain: anything still queued learns that the engine stopped.
  MutexLock lock(&queue_mu_);
  for (auto& p : queue_) {
    p->promise.set_value(corrupt_ ? Result<CommandResult>(CorruptHistoryStatus())
                                  : Result<CommandResult>(Unavailable("the engine is stopping")));
  }
  queue_.clear();
}

}  // namespace epoch::engine
