/* log.h -- the one logging module.
 *
 * One line per event on stderr:
 *     2026-11-28T17:05:21.123Z info http listening addr=127.0.0.1:8011
 * i.e. `ts level component message key=value...`, or with log_set_json(true)
 * one JSON object per line {"ts","level","component","msg", key...}: the
 * message's trailing key=value / key="quoted" pairs become string keys of
 * their own (one named ts, level, component or msg is written as
 * field_<key>), the text before them is msg. The level is
 * checked before any formatting. Every function is thread-safe; a line is
 * written with one write(2) so lines of concurrent threads never interleave.
 * Never call from a signal handler.
 */
#ifndef NERVE_LOG_H
#define NERVE_LOG_H

#include <stdbool.h>

typedef enum { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR } log_level;

/* Set the threshold from "debug", "info", "warn" or "error"; -1 if unknown. */
int log_set_level_name(const char *name);
void log_set_level(log_level lvl);
/* text (false) or JSON lines (true). */
void log_set_json(bool json);
bool log_enabled(log_level lvl);

/* Format and write one line; prefer the macros below, which skip formatting
 * when the level is filtered out. */
void log_write(log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(comp, ...) \
    do { \
        if (log_enabled(LOG_LVL_DEBUG)) log_write(LOG_LVL_DEBUG, comp, __VA_ARGS__); \
    } while (0)
#define log_info(comp, ...) \
    do { \
        if (log_enabled(LOG_LVL_INFO)) log_write(LOG_LVL_INFO, comp, __VA_ARGS__); \
    } while (0)
#define log_warn(comp, ...) \
    do { \
        if (log_enabled(LOG_LVL_WARN)) log_write(LOG_LVL_WARN, comp, __VA_ARGS__); \
    } while (0)
#define log_error(comp, ...) \
    do { \
        if (log_enabled(LOG_LVL_ERROR)) log_write(LOG_LVL_ERROR, comp, __VA_ARGS__); \
    } while (0)

#endif
