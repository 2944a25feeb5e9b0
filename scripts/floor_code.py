#!/usr/bin/env python3
"""Writes C source of 4,096 distinct small functions (~500 KB of text) for syscall_floor.c's
FLOOR_CODE_FNS knob: a code footprint between a call's system calls.

    python3 scripts/floor_code.py > /tmp/floor_code.c
    gcc -O2 -DFLOOR_CODE -o /tmp/syscall_floor scripts/syscall_floor.c /tmp/floor_code.c
    FLOOR_CODE_FNS=200 /tmp/syscall_floor 200 6
"""

FUNCTIONS = 4096

print("#include <stdint.h>")
for i in range(FUNCTIONS):
    body = " ".join(
        f"x = x * {(i * 7 + j * 13) % 251 + 3}u + {(i * 31 + j) % 97 + 1}u; x ^= x >> {j % 13 + 1};"
        for j in range(6)
    )
    print(f"__attribute__((noinline)) uint32_t f{i}(uint32_t x) {{ {body} return x; }}")
print("typedef uint32_t (*fn)(uint32_t);")
print("static const fn table[%d] = {%s};" % (FUNCTIONS, ",".join(f"f{i}" for i in range(FUNCTIONS))))
print(
    "unsigned run_code(int first, int count) { uint32_t x = 1; "
    f"for (int i = 0; i < count; i++) x = table[(first + i) % {FUNCTIONS}](x); return x; }}"
)
