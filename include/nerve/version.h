/* version.h -- the version nerve reports: `nerve --version` (main.c) and
 * nerve_build_info on /metrics (status.c). One definition so the two never
 * disagree. A leaf: no nerve includes.
 */
#ifndef NERVE_VERSION_H
#define NERVE_VERSION_H

#define NERVE_VERSION "0.2.0"

#endif
