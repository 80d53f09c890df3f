/*
 * The pod sandbox's process (registry.k8s.io/pause stand-in): holds the pod's namespaces by doing
 * nothing. As PID 1 of the pod's PID namespace (shareProcessNamespace) it reaps orphaned children;
 * SIGINT and SIGTERM end it with status 0. Static, so the image needs no libc: FROM scratch.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void shut_down(int signo) {
    (void)signo;
    static const char msg[] = "pause: shutting down\n";
    (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(0);
}

static void reap_children(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (iot-cloud stand-in for registry.k8s.io/pause:3.10)");
        return 0;
    }
    if (getpid() != 1) {
        fputs("pause: warning: not PID 1, orphans of the pod are reaped by someone else\n", stderr);
    }
    struct sigaction down = {.sa_handler = shut_down};
    struct sigaction reap = {.sa_handler = reap_children, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&down.sa_mask);
    sigemptyset(&reap.sa_mask);
    if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0 ||
        sigaction(SIGCHLD, &reap, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
