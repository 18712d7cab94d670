/*
 * noop - the cheapest scanner that still passes spoold's scanner contract.
 *
 * argv: noop FILE...   For each FILE: open, read its first 68 bytes, close. A file that
 * starts with the EICAR test string prints "FILE: Bench.EICAR FOUND" (exit 1 at the end);
 * a file that cannot be opened is an error (exit 2); otherwise exit 0.
 *
 * WHY not /bin/true: a scanner that never reports EICAR would fail the canary self-test
 * and the 5 % EICAR messages would not reach quarantine; one 68-byte read per file is
 * noise next to the fork+exec this stands in for, and the floor uses the same binary.
 * A zip (PK\3\4) is "FOUND" too, as Bench.Archive: this scanner never looks inside an
 * archive, and the canary rightly fails a scanner that calls an encrypted or over-deep
 * archive clean.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char eicar[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!";

int main(int argc, char **argv)
{
	int rc = 0;
	for (int i = 1; i < argc; i++) {
		char buf[68];
		int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stdout, "%s: ERROR\n", argv[i]);
			return 2;
		}
		ssize_t n = read(fd, buf, sizeof buf);
		close(fd);
		if (n < 0)
			return 2;
		if ((size_t)n >= sizeof eicar - 1 && memcmp(buf, eicar, sizeof eicar - 1) == 0) {
			fprintf(stdout, "%s: Bench.EICAR FOUND\n", argv[i]);
			rc = 1;
		} else if (n >= 4 && memcmp(buf, "PK\3\4", 4) == 0) {
			fprintf(stdout, "%s: Bench.Archive FOUND\n", argv[i]);
			rc = 1;
		}
	}
	return rc;
}
