"""Out-of-template probe: phrasings the generator never writes, with invented names and places.

Why: the generator's templates and the detector's context rules have one author, so the frozen
corpus measures generalisation to unseen *names and places*, not to unseen *phrasing*. These
sentences were written after the held-out run and were not tuned on; their misses are reported
in docs/deid.md as the figure to expect to fall on real notes.

    python -m benchmarks.deid.probe
"""

from __future__ import annotations

from medserve.core.phi import deidentify_text

# (text, the identifier substrings that must not survive)
PROBES: list[tuple[str, list[str]]] = [
    ("Saw Tereza Wojcikowska-Baptiste in follow-up today.", ["Tereza", "Wojcikowska"]),
    ("Daughter (Marisol) at bedside, very supportive.", ["Marisol"]),
    ("Pt and her grandson Teodoro came from Quissett this morning.", ["Teodoro", "Quissett"]),
    ("Ms Okonkwo-Farrah prefers to be called Bisi.", ["Okonkwo", "Bisi"]),
    ("Son-in-law Dagfinn will drive her home to Fiskdale.", ["Dagfinn", "Fiskdale"]),
    (
        "Her PCP is Yevgenia Strazdina at Bellweather Family Practice.",
        ["Yevgenia", "Strazdina", "Bellweather"],
    ),
    ("He is a longshoreman for Port of Quonsett Shipping.", ["Quonsett"]),
    ("Last seen 3 weeks ago on Nov 2nd.", ["Nov 2nd"]),
    ("Surgery was on the 14th.", ["14th"]),
    ("Returned from a trip to Ixtapa last week.", ["Ixtapa"]),
    ("Home address 44B Wicklow Crescent, Marstons Mills.", ["Wicklow", "Marstons"]),
    ("Call back # 774 222 0193.", ["222 0193"]),
    ("Cell:5084421190", ["5084421190"]),
    ("Visited by Ingrid and Halvard over the weekend.", ["Ingrid", "Halvard"]),
    ("Grew up on a farm outside Tishomingo.", ["Tishomingo"]),
    ("Attending: Okafor", ["Okafor"]),
    ("Wife Ngozi reports he snores.", ["Ngozi"]),
    ("DOB 7/4/1961", ["7/4"]),
    ("Seen at Mercy Ridge ED in Kittery Point on 2/3.", ["Kittery", "2/3"]),
    ("Works nights at the Sunnyvale Dollar General.", ["Sunnyvale"]),
]
# Clinical sentences with no identifier: they must come back unchanged.
CLEAN = [
    "Patient tolerated the procedure well.",
    "Aspirin 81 mg daily; Plavix held.",
    "Pain 4/10, strength 5/5.",
    "Follow up with Cardiology in 2 weeks.",
    "Chest X-ray clear. Lungs CTA bilaterally.",
    "Mobile crisis team contacted.",
    "Discussed with Oncology; plan R-CHOP.",
    "Normal sinus rhythm, Wells score 2.",
]


def run() -> tuple[int, int, int]:
    """(identifier substrings removed, in all, clean sentences changed)."""
    removed = total = 0
    for text, secrets in PROBES:
        out = deidentify_text(text)
        left = [s for s in secrets if s in out]
        total += len(secrets)
        removed += len(secrets) - len(left)
        print(("ok   " if not left else "MISS ") + out + (f"   survived: {left}" if left else ""))
    changed = 0
    for text in CLEAN:
        out = deidentify_text(text)
        if out != text:
            changed += 1
            print("OVER " + out)
    print(f"{removed}/{total} identifier parts removed; {changed}/{len(CLEAN)} clean changed")
    return removed, total, changed


if __name__ == "__main__":
    run()
