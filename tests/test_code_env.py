"""cwm/Code-v0 through real sandboxed runs: rewards, outcomes, multi-turn, task formats, and one regression
test per reward hack a submitted solution might try (each must score -1 with evidence, never +1)."""
import json
import secrets

import gymnasium
import pytest

import cwm_envs  # noqa: F401  (registers the ids)
from cwm_envs.envs.code_env import HARNESS_SOURCE, CodeEnv
from cwm_envs.errors import UsageError
from cwm_envs.sandbox import make_sandbox
from cwm_envs.sources.code_gen import generate_task
from cwm_envs.tasks import Task

ADD = Task(id="t/add", prompt='def add(a, b):\n    """Return a + b."""\n',
           tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
                 "    for i in range(5):\n        assert candidate(i, i) == 2 * i\n",
           metadata={"entry_point": "add", "public_tests": 1})
ECHO_SUM = Task(id="t/sum", prompt="Read two integers, print their sum.",
                tests=[{"input": "1 2\n", "output": "3\n", "testtype": "stdin", "public": True},
                       {"input": "10 -4\n", "output": "6\n", "testtype": "stdin", "public": False},
                       {"input": "5 5\n", "output": "10\n", "testtype": "stdin", "public": False}])
GOOD_ADD = "def add(a, b):\n    return a + b\n"
GOOD_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"


def block(code: str) -> str:
    return f"Here it is.\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def sandbox():
    sb = make_sandbox("local")
    yield sb
    sb.close()


@pytest.fixture
def env(sandbox):
    e = CodeEnv(tasks=[ADD, ECHO_SUM], sandbox=sandbox, timeout_s=2.0)
    yield e
    e.close()


def judge(env, task, code, **kw):
    result = env.judge(task, block(code) if isinstance(code, str) else code, **kw)
    return result.value, result.outcomes


# -- the ordinary path ------------------------------------------------------------------------------------

def test_correct_solutions_score_plus_one(env):
    for task, code in ((ADD, GOOD_ADD), (ECHO_SUM, GOOD_SUM)):
        env.reset(options={"task": task.id})
        _, reward, terminated, truncated, info = env.step(block(code))
        assert (reward, terminated, truncated) == (1.0, True, False)
        o = info["outcomes"]
        assert (o["parse"], o["compile"], o["pass"], o["public_pass"]) == (True, True, True, True)
        assert o["passed"] == o["total"] == (3 if task is ADD else 3)
        assert info["task_id"] == task.id


def test_format_rule_exactly_one_code_block(env):
    value, o = judge(env, ADD, "no code at all")
    assert (value, o["parse"], o["compile"]) == (-1.0, False, None)
    value, o = judge(env, ADD, block(GOOD_ADD) + block(GOOD_ADD))
    assert (value, o["parse"]) == (-1.0, False)
    value, o = judge(env, ADD, "<think>\n```python\nx=1\n```\n</think>\n" + block(GOOD_ADD))  # reasoning is not read
    assert (value, o["pass"]) == (1.0, True)


def test_compile_error_and_wrong_answer_are_told_apart(env):
    value, o = judge(env, ADD, "def add(a, b)\n    return a + b\n")
    assert (value, o["parse"], o["compile"], o["pass"]) == (-1.0, True, False, False)
    value, o = judge(env, ADD, "def add(a, b):\n    return a - b\n")
    assert (value, o["compile"], o["pass"], o["public_pass"]) == (-1.0, True, False, False)
    assert o["failures"][0]["status"] == "wrong answer" and "candidate(1, 2) == 3" in o["failures"][0]["detail"]
    value, o = judge(env, ECHO_SUM, "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n")
    assert (value, o["public_pass"], o["pass"]) == (-1.0, True, False)
    assert o["failures"][0]["status"] == "wrong answer"


def test_fraction_scheme_counts_tests(sandbox):
    env = CodeEnv(tasks=[ADD, ECHO_SUM], sandbox=sandbox, reward_scheme="fraction", timeout_s=2.0)
    value, o = judge(env, ECHO_SUM, "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n")
    assert value == pytest.approx(1 / 3) and (o["passed"], o["total"]) == (1, 3)
    value, o = judge(env, ADD, "def add(a, b):\n    return a + b if a < 0 else 3\n")
    assert value == pytest.approx(2 / 3)  # units: 1+2 -> 3 ok, -1+1 -> 0 ok, the loop fails
    assert judge(env, ADD, "nope")[0] == 0.0


def test_an_assert_that_tests_nothing_is_no_unit(sandbox):
    """HumanEval's `assert True, "..."` lines would pay a "fraction" share to a solution that does nothing."""
    task = Task(id="t/true", prompt="def inc(x):\n", tests="def check(candidate):\n    assert candidate(1) == 2\n"
                "    assert True, 'This prints if this assert fails'\n    assert abs(1 - 1) < 1e-6\n",
                metadata={"entry_point": "inc"})
    env = CodeEnv(tasks=[task], sandbox=sandbox, reward_scheme="fraction", timeout_s=2.0)
    value, o = judge(env, task, "def inc(x):\n    return 0\n")
    assert (value, o["total"]) == (0.0, 1)
    assert judge(env, task, "def inc(x):\n    return x + 1\n")[0] == 1.0


def test_whitespace_and_number_tolerant_stdout(sandbox):
    task = Task(id="t/float", prompt="print 1/3 and 2 on two lines", metadata={"float_tolerance": 1e-6},
                tests=[{"input": "", "output": "0.333333333\n2\n", "testtype": "stdin"}])
    env = CodeEnv(tasks=[task], sandbox=sandbox)
    assert judge(env, task, "print('0.3333333  ')\nprint(2)\nprint()\n")[0] == 1.0
    assert judge(env, task, "print(0.34)\nprint(2)\n")[0] == -1.0
    assert judge(env, task, "print(1/3)\nprint(2.0000001)\n")[0] == -1.0   # the integer needs an integer


def test_integers_are_exact_and_floats_need_the_tasks_tolerance(sandbox):
    """A float near (or far from, when the number is large) the expected integer is never a pass."""
    big = Task(id="t/big", prompt="print 10**12", tests=[{"input": "", "output": "1000000000000\n", "testtype": "stdin"}])
    env = CodeEnv(tasks=[big], sandbox=sandbox)
    for printed in ("1000000000000.4", "1000000000500", "1e12", "1000000000000.0"):
        assert judge(env, big, f"print({printed!r})\n")[0] == -1.0, printed
    assert judge(env, big, "print(10**12)\n")[0] == 1.0
    third = Task(id="t/third", prompt="print 1/3", tests=[{"input": "", "output": "0.3333333333\n", "testtype": "stdin"}])
    env = CodeEnv(tasks=[third], sandbox=sandbox)
    assert judge(env, third, "print('0.3333333')\n")[0] == -1.0    # no tolerance unless the task gives one
    assert judge(env, third, "print('0.33333333330')\n")[0] == 1.0  # the same exact value
    with pytest.raises(UsageError, match="float_tolerance"):
        CodeEnv(tasks=[Task(id="t/bad", prompt="", metadata={"float_tolerance": "1e-6"}, tests=third.tests)]).reset()


def test_multi_turn_feedback_then_retry(sandbox):
    env = CodeEnv(tasks=[ECHO_SUM], sandbox=sandbox, max_turns=2)
    obs, info = env.reset(seed=0)
    assert info["max_turns"] == 2 and "standard input" in obs
    obs, reward, terminated, _, info = env.step(block("print(0)\n"))
    assert (reward, terminated, info["remaining_turns"]) == (0.0, False, 1)
    assert info["outcomes"]["public_pass"] is False
    assert "expected" in obs and "1 2" in obs  # public test shown; hidden ones are never shown
    assert "10 -4" not in obs
    _, reward, terminated, _, info = env.step(block(GOOD_SUM))
    assert (reward, terminated, info["outcomes"]["pass"]) == (1.0, True, True)
    with pytest.raises(UsageError):
        env.step(block(GOOD_SUM))  # the episode is over
    env.close()


def test_multi_turn_last_turn_is_judged_on_all_tests(sandbox):
    env = CodeEnv(tasks=[ECHO_SUM], sandbox=sandbox, max_turns=2)
    env.reset(seed=0)
    # passes the public test, fails a hidden one: judged at once on everything, ends with -1
    _, reward, terminated, _, info = env.step(block("a, b = map(int, input().split())\nprint(3)\n"))
    assert (reward, terminated, info["outcomes"]["public_pass"], info["outcomes"]["pass"]) == (-1.0, True, True, False)


def test_generated_tasks_are_seeded_and_solvable(sandbox):
    env = CodeEnv(sandbox=sandbox)
    first = [env.reset(seed=s)[0] for s in range(4)]
    assert first == [env.reset(seed=s)[0] for s in range(4)]
    kinds = set()
    for seed in range(12):
        task = generate_task(seed)
        kinds.add("stdin" if isinstance(task.tests, list) else "call")
        assert env.judge(task, env.reference_response(task)).value == 1.0, task.id
        assert env.judge(task, block("def nothing():\n    pass\nprint('?')\n")).value == -1.0
    assert kinds == {"stdin", "call"}
    env.close()


def test_livecodebench_jsonl_both_test_types(tmp_path, sandbox):
    rows = [
        {"question_id": "s1", "question_content": "Print twice the input.", "starter_code": "",
         "public_test_cases": json.dumps([{"input": "4\n", "output": "8\n", "testtype": "stdin"}]),
         "private_test_cases": json.dumps([{"input": "-3\n", "output": "-6\n", "testtype": "stdin"}]),
         "metadata": "{}"},
        {"question_id": "f1", "question_content": "Return the pair sums.",
         "starter_code": "class Solution:\n    def pairs(self, nums: List[int], k: int) -> List[int]:\n        ",
         "public_test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional"}]),
         "private_test_cases": json.dumps([{"input": "[]\n0", "output": "[]", "testtype": "functional"}]),
         "metadata": json.dumps({"func_name": "pairs"})},
    ]
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = CodeEnv(tasks=str(path), sandbox=sandbox)
    s1, f1 = env.tasks
    assert "standard input" in env.reset(options={"task": "s1"})[0]
    assert "class Solution" in env.reset(options={"task": "f1"})[0]
    assert judge(env, s1, "print(2 * int(input()))\n")[0] == 1.0
    assert judge(env, s1, "print(2 * abs(int(input())))\n")[0] == -1.0
    good = "class Solution:\n    def pairs(self, nums: List[int], k: int) -> List[int]:\n        return tuple(x + k for x in nums)\n"
    assert judge(env, f1, good)[0] == 1.0  # a tuple answers a list, as LiveCodeBench compares
    assert judge(env, f1, good.replace("x + k", "x"))[0] == -1.0
    env.close()


def test_bad_tasks_and_actions_are_usage_errors(sandbox):
    with pytest.raises(UsageError):
        CodeEnv(tasks=[Task(id="x", prompt="p", tests="def nope(): pass", metadata={"entry_point": "f"})],
                sandbox=sandbox).reset(seed=0)
    env = CodeEnv(tasks=[ADD], sandbox=sandbox)
    env.reset(seed=0)
    with pytest.raises(UsageError):
        env.step(42)
    with pytest.raises(UsageError):
        env.reset(options={"task": "no such id"})
    with pytest.raises(UsageError):
        CodeEnv(reward_scheme="best-of-luck")


def test_registered_id_makes_the_env():
    env = gymnasium.make("cwm/Code-v0", max_turns=2)
    obs, info = env.reset(seed=1)
    assert obs and info["turn"] == 0
    env.close()
    env.close()


# -- reward hacks: each scores -1 with evidence -------------------------------------------------------------

WRONG_ADD = "def add(a, b):\n    return 0\n"

CALL_HACKS = {
    # the process ends with status 0 before any test ran
    "os._exit(0) at import": ("import os\nos._exit(0)\n" + GOOD_ADD, "load error"),
    "sys.exit(0) at import": ("import sys\n" + GOOD_ADD + "sys.exit(0)\n", "load error"),
    "os._exit(0) during a call": ("import os\ndef add(a, b):\n    os._exit(0)\n", "runtime error"),
    # patched builtins and assert live in the candidate's process only
    "patched builtins": ("import builtins\nbuiltins.AssertionError = type('AE', (Exception,), {})\n"
                         "builtins.isinstance = lambda *a: True\nbuiltins.print = lambda *a, **k: None\n"
                         "import sys\nsys.excepthook = lambda *a: None\n" + WRONG_ADD, "wrong answer"),
    # an object equal to everything cannot cross to the judge
    "always-equal object": ("class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                            "def add(a, b):\n    return E()\n", "runtime error"),
    "int subclass equal to everything": ("class I(int):\n    def __eq__(self, other):\n        return True\n"
                                         "def add(a, b):\n    return I(0)\n", "runtime error"),
    # a fake verdict printed on every channel the candidate holds
    "fake all-passed output": (
        "import os, json\nfake = json.dumps({'load_error': None, 'aborted': None, 'units': {str(i): [True, None] for i in range(9)}})\n"
        "for tok in ('0' * 32, 'all tests passed', 'PASSED'):\n    print(tok + ' ' + fake, flush=True)\n"
        "    for fd in (1, 2):\n        os.write(fd, (tok + ' ' + fake + '\\n').encode())\n" + WRONG_ADD, "wrong answer"),
    # ... and on every descriptor, the protocol pipes included
    "forged lines on every fd": (
        "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'0' * 32 + b' {\"units\": {\"0\": [true, null]}}\\n')\n"
        "    except OSError:\n        pass\n" + WRONG_ADD, None),
    # the judge is another process: killing it leaves no verdict
    "kill the judge": ("import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n", "no verdict"),
    "infinite loop at import": ("while True:\n    pass\n" + GOOD_ADD, "load error"),
    "infinite loop in the call": ("def add(a, b):\n    while True:\n        pass\n", "timeout"),
    "fork bomb": ("import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
                  "        except OSError:\n            pass\n", None),
    "huge output with right answers": ("def add(a, b):\n    print('x' * 10_000_000)\n    return a + b\n", "output limit"),
    "memory bomb": ("blob = bytearray(64 * 2**30)\n" + GOOD_ADD, "load error"),
    "generator instead of a value": ("def add(a, b):\n    yield a + b\n", "runtime error"),
}


@pytest.mark.parametrize("name", list(CALL_HACKS))
def test_call_hack_scores_minus_one(env, name):
    code, status = CALL_HACKS[name]
    value, o = judge(env, ADD, code)
    assert value == -1.0 and o["pass"] is False, name
    assert o["failures"], "a -1 must come with evidence"
    if status:
        assert o["failures"][0]["status"] == status, o["failures"][0]
    assert judge(env, ADD, GOOD_ADD)[0] == 1.0  # the sandbox still judges the next submission


SECRET_HUNT = r'''
import os, re
found = []
def grab(path, size=1 << 20):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            found.append(os.read(fd, size))
        finally:
            os.close(fd)
    except OSError as exc:
        os.write(2, ("denied %s: %s\n" % (path, exc.strerror)).encode())
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    for leaf in ("cmdline", "environ"):
        grab("/proc/%s/%s" % (pid, leaf))
    try:
        fds = os.listdir("/proc/%s/fd" % pid)
    except OSError:
        fds = []
    for fd in fds:
        grab("/proc/%s/fd/%s" % (pid, fd))
ppid = os.getppid()
try:
    with open("/proc/%d/maps" % ppid) as maps, open("/proc/%d/mem" % ppid, "rb") as mem:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            try:
                mem.seek(lo); found.append(mem.read(min(hi - lo, 1 << 22)))
            except OSError:
                pass
except OSError as exc:
    os.write(2, ("denied judge memory: %s\n" % exc.strerror).encode())
import sys
for root, _, files in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/usr", "/dev", "/lib", sys.base_prefix)):  # read-only installs
        continue
    for f in files:
        grab(os.path.join(root, f), 1 << 16)
tokens = set(re.findall(rb"[0-9a-f]{32}", b"\n".join(found)))
os.write(2, b"TOKENS " + b" ".join(sorted(tokens)) + b"\n")
for tok in tokens:
    line = tok + b' {"load_error": null, "aborted": null, "units": {"0": [true, null], "1": [true, null], "2": [true, null]}}\n'
    for fd in range(3, 64):
        try:
            os.write(fd, line)
        except OSError:
            pass
    try:
        with open("/proc/%d/fd/1" % ppid, "wb") as out:
            out.write(line)
    except OSError:
        pass
def add(a, b):
    return 0
'''


def test_candidate_cannot_find_the_nonce(sandbox):
    """Run the judge directly with a known nonce: the candidate reads every file and process it can reach,
    yet never sees the nonce, and its forged lines make no verdict."""
    nonce = secrets.token_hex(16)
    env = CodeEnv(tasks=[ADD], sandbox=sandbox)
    spec = env._spec(ADD)
    payload = {"nonce": nonce, "solution": SECRET_HUNT, "tests": spec.test_module, "entry": list(spec.entry),
               "call_timeout_s": 10, "deadline_s": 20}
    res = sandbox.run(HARNESS_SOURCE, stdin=json.dumps(payload), timeout=30)
    assert "TOKENS" in res.stderr, res.stderr[-2000:]  # the hunt ran to its end
    assert "denied judge memory" in res.stderr  # the judge is not dumpable
    assert nonce not in res.stderr
    verdict_lines = [line for line in res.stdout.splitlines() if line.startswith(nonce)]
    assert len(verdict_lines) == 1 and '"units": {"0": [false' in verdict_lines[0]
    assert env.judge(ADD, block(SECRET_HUNT)).value == -1.0


PLANT = r'''
import os
evil = """
import json, os, atexit
_loads = json.loads
def _spy(s, *a, **k):
    data = _loads(s, *a, **k)
    if isinstance(data, dict) and "nonce" in data:
        fake = {"load_error": None, "aborted": None, "units": {str(i): [True, None] for i in range(50)}}
        os.write(1, (data["nonce"] + " " + json.dumps(fake) + "\\n").encode())
        os._exit(0)
    return data
json.loads = _spy
"""
for name in ("subprocess", "select", "signal", "struct", "marshal", "sitecustomize"):
    with open(name + ".py", "w") as fh:
        fh.write(evil)
def add(a, b):
    return a + b
'''


def test_files_left_by_one_run_cannot_take_over_a_later_judge(env, sandbox):
    judge(env, ADD, PLANT)
    assert "subprocess.py" in sandbox.list_files(".")  # the plant succeeded...
    value, o = judge(env, ADD, WRONG_ADD)
    assert value == -1.0 and o["failures"][0]["status"] == "wrong answer"  # ...and took over nothing
    assert judge(env, ADD, GOOD_ADD)[0] == 1.0


STDIN_HACKS = {
    "exit(0) before printing": ("import sys\nsys.exit(0)\n" + GOOD_SUM, "wrong answer"),
    "fake all-passed output": ("print('All tests passed!')\nprint('OK')\n", "wrong answer"),
    "reading files for answers": ("import os\nfor r, _, fs in os.walk('/'):\n    if r.startswith(('/proc', '/sys', '/usr')):\n"
                                  "        continue\n    for f in fs:\n        try:\n            print(open(os.path.join(r, f)).read()[:50])\n"
                                  "        except Exception:\n            pass\n", None),
    "huge output": ("print('3\\n' * 5_000_000)\n", "output limit"),
    "infinite loop": ("while True:\n    pass\n", "timeout"),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", None),
    "crash after a right answer": (GOOD_SUM + "raise SystemExit(3)\n", "runtime error"),
    "integer too long for int()": ("import sys\nsys.set_int_max_str_digits(0)\nprint(10 ** 5000)\n", "wrong answer"),
}


@pytest.mark.parametrize("name", list(STDIN_HACKS))
def test_stdin_hack_scores_minus_one(env, name):
    code, status = STDIN_HACKS[name]
    value, o = judge(env, ECHO_SUM, code)
    assert value == -1.0 and o["pass"] is False and o["failures"], name
    if status:
        assert o["failures"][0]["status"] == status, o["failures"][0]
    assert judge(env, ECHO_SUM, GOOD_SUM)[0] == 1.0


def test_make_vec_judges_each_sub_env():
    envs = gymnasium.make_vec("cwm/Code-v0", num_envs=2, vectorization_mode="sync")
    try:
        obs, info = envs.reset(seed=5)
        tasks = [e.unwrapped.task for e in envs.envs]
        actions = [envs.envs[0].unwrapped.reference_response(tasks[0]), "```python\nprint('nope')\n```"]
        _, reward, terminated, _, info = envs.step(actions)
        assert list(reward) == [1.0, -1.0] and all(terminated)
        assert list(info["task_id"]) == [t.id for t in tasks]
    finally:
        envs.close()
