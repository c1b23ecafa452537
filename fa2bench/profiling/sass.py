"""Reading a compiled kernel's SASS (text from cuobjdump, ``compile_sm90.sass``): pure text processing, no Triton,
so tests may import it in a process that runs the CPU interpreter (importing ``compile_sm90`` turns it off)."""
from __future__ import annotations

import re

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def step_loops(sass_text: str) -> list[list[str]]:
    """The innermost loops of a compiled attention kernel that run exponentials (its per-block steps: a forward's
    unmasked and masked loops, a backward's), each as the list of its instructions, in address order."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in INSTRUCTION.finditer(sass_text)]
    loops = [(int(m.group(1), 16), addr) for addr, text in ins
             if (m := re.search(r"\bBRA (0x[0-9a-f]+)", text)) and int(m.group(1), 16) < addr]
    inner = [(lo, hi) for lo, hi in loops if not any(lo < a <= b < hi for a, b in loops)]
    bodies = [[text for a, text in ins if lo <= a <= hi] for lo, hi in inner]
    return [body for body in bodies if any("MUFU.EX2" in text for text in body)]
