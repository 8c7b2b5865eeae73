// The server's log: stderr, with its own timestamps on a terminal or in a
// file, and in journald's form when systemd connected stderr to the journal.
#pragma once

#include "config/config.h"

namespace qnbd::server {

// True when stderr is the journal stream systemd names in JOURNAL_STREAM
// ("DEVICE:INODE" of the socket; a redirected stderr does not match).
bool stderr_is_journal();

// Installs the default logger. Under the journal a line is "<N>message":
// journald adds the time itself and reads the syslog priority N (sd-daemon(3)).
void setup_logging(config::LogLevel level);

// Changes the level of the installed logger (SIGHUP reload).
void set_log_level(config::LogLevel level);

}  // namespace qnbd::server
