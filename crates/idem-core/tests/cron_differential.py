#!/usr/bin/env python3
"""Oracle for crates/idem-core/tests/cron_differential.rs.

Reads {"cases": [{"expr", "zone", "starts", "count", "horizon_days"}]} as JSON on stdin and
answers, for each case, on stdout:

- "cronie_valid" / "cronie_error": whether cronie 1.7 would accept the five time fields, by a
  port of the field grammar of cronie's src/entry.c (get_list / get_range / get_number /
  set_element); the port also yields cronie's own value set per field.
- "croniter_valid" / "croniter_error": whether croniter 7 accepts the expression.
- "fires": for each start instant, the next `count` fires (at most `horizon_days` ahead), as
  RFC 3339 UTC strings. The per-field value sets are croniter's (`croniter.expand`); the
  day-of-month / day-of-week rule on top of them is cronie's, applied here: the two day fields
  are ANDed when either field's text starts with `*`, ORed otherwise.
- "croniter_native_agrees": whether croniter's own `get_next(implement_cron_bug=True)` gives the
  same fires from the first start instant.

Why the day rule is applied here instead of trusting `implement_cron_bug=True`: croniter reads
that flag as "either field text starts with `*`", which is cronie's rule, but before looking at
the text it folds a field that expands to every value into `*` whenever the *other* field's text
contains a `*` anywhere. So `0 0 1-31 * 1,*/3` is ANDed by croniter (fires on Sun, Mon, Wed,
Sat) and ORed by cronie (fires daily). The `stats` block counts how often that mattered.

Also emitted: "fields_agree", whether croniter's per-field value sets equal cronie's (only where
both accept), so a croniter quirk in field expansion cannot hide as an idem disagreement.

Extensions that cronie lacks are read as croniter reads them: `N/step` and `L` through
croniter's field values; `W` (which `croniter.expand` does not carry) through croniter's own
search, and only while day-of-week is `*`, so that the day rule cannot matter.
"""

import datetime as dt
import functools
import json
import sys
from zoneinfo import ZoneInfo

from croniter import croniter

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
# cronie's DowNames has Sun twice (0 and 7); strcasecmp finds the first, so SUN is 0.
DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]

# (name, low, high, names) for the five fields, as in cronie's load_entry.
CRONIE_FIELDS = [
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, MONTH_NAMES),
    ("day-of-week", 0, 7, DOW_NAMES),
]

CRONIE_NICKNAMES = {
    # cronie compares these with strcmp: lower case only.
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

INT_MAX = 2**31 - 1

# croniter's own search is slow; the claim check compares this many fires.
NATIVE_FIRES = 5


class CronieError(Exception):
    pass


def cronie_number(text, pos, low, names):
    """get_number: all alphanumerics from pos; a decimal number, else a name. (value, pos)."""
    end = pos
    while end < len(text) and text[end].isascii() and text[end].isalnum():
        end += 1
    token = text[pos:end]
    if not token:
        raise CronieError("expected a number")
    if token.isdigit():
        value = int(token)
        if value > INT_MAX:
            # strtol saturates and the int cast wraps; no such value is ever in range.
            raise CronieError("number out of range")
        return value, end
    if names is not None:
        lowered = token.lower()
        for i, name in enumerate(names):
            if name == lowered:
                return i + low, end
    raise CronieError(f"bad token {token!r}")


def is_separator(ch):
    return ch in " \t\n,"


def cronie_step(text, pos):
    """R_STEP then R_TERMS: a non-zero number, then a separator."""
    step, pos = cronie_number(text, pos, 0, None)
    if step == 0:
        raise CronieError("zero step")
    if not is_separator(text[pos]):
        raise CronieError("junk after step")
    return step, pos


def cronie_random(text, pos, lo, low, high, names):
    """R_RANDOM, after "~": an optional upper bound, then a separator. A random pick in lo-hi."""
    if is_separator(text[pos]):
        hi = high
    else:
        hi, pos = cronie_number(text, pos, low, names)
        if not is_separator(text[pos]):
            raise CronieError("junk after random range")
    if lo > hi:
        raise CronieError("empty random range")
    return pos


def cronie_range(text, pos, low, high, names, bits, state):
    """get_range's state machine; returns the position of the separator it stopped at.

    A "~" (cronie 1.6's random pick at load time) is valid but is no schedule to compare: it
    sets state["random"]."""
    step = 1
    ch = text[pos]
    if ch == "*":
        lo, hi = low, high
        pos += 1
        if text[pos] == "/":
            step, pos = cronie_step(text, pos + 1)
        elif not is_separator(text[pos]):
            raise CronieError("junk after *")
    elif ch == "~":
        state["random"] = True
        return cronie_random(text, pos + 1, low, low, high, names)
    else:
        lo, pos = cronie_number(text, pos, low, names)
        ch = text[pos]
        if ch == "~":
            state["random"] = True
            return cronie_random(text, pos + 1, lo, low, high, names)
        if ch == "-":
            hi, pos = cronie_number(text, pos + 1, low, names)
            if text[pos] == "/":
                step, pos = cronie_step(text, pos + 1)
            else:
                # cronie 1.6.1: "X-0" without a step reads as "X-7", in every field.
                if lo > hi and hi == 0:
                    hi = 7
                if not is_separator(text[pos]):
                    raise CronieError("junk after range")
        elif is_separator(ch):
            hi = lo
        else:
            raise CronieError(f"unexpected {ch!r}")
    # A step larger than the range is only a warning in cronie; a reversed range sets nothing.
    i = lo
    while i <= hi:
        if i < low or i > high:
            raise CronieError(f"{i} out of range {low}-{high}")
        bits.add(i)
        i += step
    return pos


def cronie_list(text, low, high, names, state):
    """get_list: ranges separated by commas. An empty result is accepted (it never matches)."""
    text = text + " "
    bits = set()
    pos = 0
    while True:
        pos = cronie_range(text, pos, low, high, names, bits, state)
        if text[pos] == ",":
            pos += 1
            continue
        return bits


def cronie_parse(expr):
    """(value sets, dom_star, dow_star), or CronieError naming the field."""
    stripped = expr.strip()
    if stripped.startswith("@"):
        if stripped == "@reboot":
            return None  # valid for cronie, but no schedule
        if stripped not in CRONIE_NICKNAMES:
            raise CronieError("bad time specifier")
        stripped = CRONIE_NICKNAMES[stripped]
    fields = stripped.split()
    if len(fields) != 5:
        raise CronieError(f"{len(fields)} fields")
    sets = []
    state = {"random": False}
    for (name, low, high, names), text in zip(CRONIE_FIELDS, fields):
        try:
            sets.append(cronie_list(text, low, high, names, state))
        except CronieError as e:
            raise CronieError(f"bad {name}: {e}") from None
    if state["random"]:
        return None
    dow = sets[4]
    if 0 in dow or 7 in dow:
        dow |= {0, 7}
    sets[4] = {d % 7 for d in dow}
    return sets, fields[2].startswith("*"), fields[4].startswith("*")


FULL = [set(range(0, 60)), set(range(0, 24)), set(range(1, 32)), set(range(1, 13)), set(range(0, 7))]


def croniter_sets(expr):
    """croniter's per-field value sets for a five-field expression; in day-of-month, 0 stands for
    `L` (the last day of the month)."""
    expanded, nth = croniter.expand(expr)
    if nth:
        raise ValueError("nth weekday is not compared")
    sets = []
    for i, values in enumerate(expanded):
        if "*" in values:
            sets.append(set(FULL[i]))
            continue
        if i == 2:
            values = [0 if v == "l" else v for v in values]
        if any(not isinstance(v, int) for v in values):
            raise ValueError(f"non-numeric value in field {i}: {values}")
        s = set(values)
        if i == 4:
            s = {v % 7 for v in s}
        sets.append(s)
    return sets


def is_last_day(day):
    return (day + dt.timedelta(days=1)).month != day.month


def day_matches(day, doms, dows, and_rule):
    dom_ok = day.day in doms or (0 in doms and is_last_day(day))
    dow_ok = (day.isoweekday() % 7) in dows
    return (dom_ok and dow_ok) if and_rule else (dom_ok or dow_ok)


def next_fires(sets, and_rule, tz, start, count, horizon_days):
    """The first `count` matching local wall-clock minutes strictly after `start` and no later
    than `horizon_days` after it."""
    minutes, hours, doms, months, dows = sets
    hours, minutes = sorted(hours), sorted(minutes)
    local_start = start.astimezone(tz).replace(tzinfo=None)
    horizon = start + dt.timedelta(days=horizon_days)
    end_day = horizon.astimezone(tz).date()
    day = local_start.date()
    out = []
    while day <= end_day and len(out) < count:
        if day.month not in months:
            day = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            continue
        if day_matches(day, doms, dows, and_rule):
            # On the start's own day, only minutes after it (a fire at h:m:00 is after the start
            # exactly when (h, m) is after the start's hour and minute).
            after = (local_start.hour, local_start.minute) if day == local_start.date() else (-1, -1)
            for h in hours:
                if h < after[0]:
                    continue
                for m in minutes:
                    if (h, m) <= after:
                        continue
                    local = dt.datetime(day.year, day.month, day.day, h, m)
                    instant = local.replace(tzinfo=tz).astimezone(dt.timezone.utc)
                    if instant > horizon:
                        return out
                    out.append(instant)
                    if len(out) == count:
                        return out
        day += dt.timedelta(days=1)
    return out


def croniter_native(expr, tz, start, count, horizon_days):
    """croniter's own next fires (cronie's day rule as croniter reads it), up to the horizon."""
    horizon = start + dt.timedelta(days=horizon_days)
    it = croniter(expr, start.astimezone(tz), implement_cron_bug=True)
    out = []
    while len(out) < count:
        t = it.get_next(dt.datetime)
        if t > horizon:
            break
        out.append(t)
    return out


def rfc3339(t):
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def parse_instant(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


@functools.lru_cache(maxsize=None)
def judge(expr):
    """Both parsers' verdicts on one expression (the same for every zone and start)."""
    out = {"expr": expr}
    try:
        parsed = cronie_parse(expr)
        out["cronie_valid"] = True
    except CronieError as e:
        parsed = None
        out["cronie_valid"] = False
        out["cronie_error"] = str(e)
    try:
        # croniter reads 6 fields as "seconds last"; only 5-field expressions are compared.
        if len(expr.split()) != 5:
            raise ValueError("not five fields")
        sets = croniter_sets(expr)
        out["croniter_valid"] = True
    except Exception as e:  # croniter raises several error types
        sets = None
        out["croniter_valid"] = False
        out["croniter_error"] = f"{type(e).__name__}: {e}"[:200]
    return out, parsed, sets


def answer(case, stats):
    expr = case["expr"]
    verdicts, parsed, sets = judge(expr)
    out = dict(verdicts)
    if sets is None:
        return out
    fields = expr.split()
    and_rule = fields[2].startswith("*") or fields[4].startswith("*")
    if parsed is not None:
        out["fields_agree"] = parsed[0] == sets
        if not out["fields_agree"]:
            stats["fields_disagree"] += 1
    tz = ZoneInfo(case["zone"])
    starts = [parse_instant(s) for s in case["starts"]]
    if "w" in fields[2].lower():
        # `W` is not cronie's, and croniter.expand does not carry it in the field values: take
        # croniter's own search, which is the reading to compare with while day-of-week is `*`
        # (then the day rule cannot matter).
        if fields[4] != "*":
            return out
        out["fires"] = [
            [rfc3339(t) for t in croniter_native(expr, tz, s, case["count"], case["horizon_days"])]
            for s in starts
        ]
        return out
    all_fires = [next_fires(sets, and_rule, tz, s, case["count"], case["horizon_days"]) for s in starts]
    out["fires"] = [[rfc3339(t) for t in fires] for fires in all_fires]
    stats["fires"] += sum(len(f) for f in all_fires)
    # croniter's own reading, for the claim in the module doc: from the first start, in the first
    # zone, where the day rule can matter (both day fields restricted).
    expected = all_fires[0][:NATIVE_FIRES]
    if case["native_check"] and fields[2] != "*" and fields[4] != "*" and expected:
        it = croniter(expr, starts[0].astimezone(tz), implement_cron_bug=True)
        native = []
        try:
            for _ in expected:
                native.append(it.get_next(dt.datetime))
        except Exception:
            pass
        agrees = [rfc3339(t) for t in native] == [rfc3339(t) for t in expected]
        out["croniter_native_agrees"] = agrees
        stats["native_checked"] += 1
        if not agrees:
            stats["native_disagree"] += 1
            if len(stats["native_examples"]) < 5:
                stats["native_examples"].append(expr)
    return out


def main():
    request = json.load(sys.stdin)
    stats = {"fires": 0, "fields_disagree": 0, "native_checked": 0, "native_disagree": 0, "native_examples": []}
    answers = [answer(case, stats) for case in request["cases"]]
    json.dump({"answers": answers, "stats": stats}, sys.stdout)


if __name__ == "__main__":
    main()
