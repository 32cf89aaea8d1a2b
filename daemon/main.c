/* main.c - parse arguments, load config, run the loop. */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "tollgate: not yet\n");
    return 1;
}
