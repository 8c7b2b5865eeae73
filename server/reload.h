// What a reload (SIGHUP) changes: the difference between the exports being
// served and those of the re-read config, as actions, and the settings that
// only a restart can change. Pure: no I/O, unit-tested (tests/unit/reload_test).
#pragma once

#include "config/config.h"

#include <string>
#include <vector>

namespace qnbd::server {

struct ExportAction {
  enum Kind {
    add,     // new name: open and serve at once
    remove,  // gone: refuse new clients, close when the last one leaves
    reopen,  // image or how it is opened changed: reopen when the last client leaves
    update,  // only fields read per new connection changed: apply at once
  };
  Kind kind;
  std::string name;
  config::Export next;  // the new definition (add, reopen, update)
};

// True if serving `next` instead of `current` needs the image reopened; false
// when they differ at most in fields a new connection reads (description,
// allow-list).
bool needs_reopen(const config::Export& current, const config::Export& next);

// Actions turning exports `current` into `next`, in `next` order after the
// removals; unchanged exports produce none.
std::vector<ExportAction> plan_exports(const std::vector<config::Export>& current,
                                       const std::vector<config::Export>& next);

// The global keys whose change needs a restart (listen, workers, pid_file);
// a reload keeps their old values and names them in a warning.
std::vector<std::string> restart_only_changes(const config::Config& current,
                                              const config::Config& next);

}  // namespace qnbd::server
