/* stress.c -- `nerve stress` (placeholder until the load generator lands). */
#include "nerve/stress.h"

#include <stdio.h>

int stress_main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nerve stress: not available in this build\n");
    return 2;
}
