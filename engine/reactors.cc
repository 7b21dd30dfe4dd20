// The Engine's reactor thread, which runs the side effects of durable events off
// the writer thread, and how the leader learns what became of its containers: the
// agents' leases (Heartbeat, expired on ticks) and the watch of a Watched() backend
// (its Describe calls run as reactor tasks).
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace epoch::engine {

void Engine::Heartbeat(const std::string& container) {
  MutexLock lock(&lease_mu_);
  last_seen_[container] = clock_->Now();
}

std::vector<std::string> Engine::ExpiredLeases(TimePoint now) {
  std::vector<std::string> out;
  MutexLock lock(&lease_mu_);
  for (const auto& [id, c] : working_.containers) {
    if (c.phase != ContainerPhase::kRegistered) continue;
    auto it = last_seen_.find(id);
    if (it == last_seen_.end()) {
      last_seen_[id] = now;  // first sight (e.g. just registered): lease starts now
      continue;
    }
    if (now - it->second > options_.config.lease) out.push_back(id);
  }
  return out;
}

void Engine::MaybeWatch(TimePoint now) {
  if (!backend_ || !backend_->Watched() || options_.watch_interval <= Micros::zero()) return;
  if (now < next_watch_ || watch_in_flight_) return;
  next_watch_ = now + options_.watch_interval;
  std::vector<ContainerBackend::Ref> live;
  for (const auto& [id, c] : working_.containers) {
    if ((c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered) &&
        !c.handle.empty()) {
      live.push_back({id, c.handle});
    }
  }
  {
    // Forget containers that are no longer live.
    MutexLock lock(&watch_mu_);
    auto gone = [&](const auto& kv) {
      return std::none_of(live.begin(), live.end(),
                          [&](const auto& l) { return l.container_id == kv.first; });
    };
    std::erase_if(watched_, gone);
    std::erase_if(queued_seen_, gone);
  }
  if (live.empty()) return;
  watch_in_flight_ = true;
  PostReactor([this, refs = std::move(live)] {
    auto answers = backend_->DescribeAll(refs);
    for (size_t i = 0; i < refs.size() && i < answers.size(); ++i) {
      const std::string& id = refs[i].container_id;
      const std::string& handle = refs[i].handle;
      const auto& d = answers[i];
      if (!d.ok()) {
        spdlog::warn("watching container {} ({}): {}", id, handle, d.status().ToString());
        continue;
      }
      {
        MutexLock lock(&watch_mu_);
        watched_[id] = *d;
        if (d->state == ContainerDescription::State::kPending) queued_seen_[id] = clock_->Now();
      }
      if (d->state == ContainerDescription::State::kGone) {
        spdlog::warn("container {} is gone: {}", id, d->detail);
        (void)Execute(ContainerExited{id, handle, d->detail});
      }
    }
    watch_in_flight_ = false;
  });
}

void Engine::PostReactor(std::function<void()> task) {
  {
    MutexLock lock(&reactor_mu_);
    reactor_tasks_.push_back(std::move(task));
  }
  reactor_cv_.Signal();
}

void Engine::ReactorLoop() {
  while (true) {
    std::function<void()> task;
    {
      MutexLock lock(&reactor_mu_);
      while (!(reactor_stopping_ || !reactor_tasks_.empty())) reactor_cv_.Wait(&reactor_mu_);
      if (reactor_stopping_) return;
      task = std::move(reactor_tasks_.front());
      reactor_tasks_.pop_front();
    }
    task();
  }
}

}  // namespace epoch::engine
