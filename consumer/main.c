/* main.c: the rotor binary: dispatches to a subcommand (placeholder until cli.c lands). */
#include <stdio.h>

#include "rotor.h"

int main(void)
{
    printf("rotor %s\n", ROTOR_VERSION);
    return 0;
}
