/* stress.h -- `nerve stress`: the load generator and invariant checker
 * (SPEC §9). It talks to one or more running daemons over HTTP only.
 */
#ifndef NERVE_STRESS_H
#define NERVE_STRESS_H

/* Run `nerve stress ARGS...`: ARGV[0] is "stress" (as a main's program
 * name), the options follow.
 * Returns the process exit code: 0 all invariants held, 1 an invariant
 * failed, 2 usage or setup error. */
int stress_main(int argc, char **argv);

#endif
