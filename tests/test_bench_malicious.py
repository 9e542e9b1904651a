"""The bench's malicious section: which systems it picks and how it prints the ratios."""

from bench.run import is_malicious, malicious_lines, protocol_suites


def test_only_the_malicious_suite_is_picked():
    suites = protocol_suites()
    picked = [name for name, protocol in suites.items()
              if is_malicious({"system": "cotrain", "protocol": protocol})]
    assert picked == ["malicious"]
    assert not is_malicious({"system": "crypten"})


def test_ratios_are_printed_per_workload_at_the_size_that_ran():
    dealer, malicious = "cotrain-gloo-dealer", "cotrain-gloo-malicious"
    section = {
        "W1": {dealer: {"wall_s": 0.5, "cpu_s": 0.2, "bytes": 1000, "rounds": 10, "size": 20000},
               malicious: {"wall_s": 2.0, "cpu_s": 0.6, "bytes": 45000, "rounds": 14, "size": 20000}},
        "W6": {dealer: {"wall_s": 1.0, "cpu_s": 1.0, "bytes": 10, "rounds": 1, "size": 1024},
               malicious: {"na": "n/a: a phase ran past 420 s", "size": 1024}},
    }
    lines = malicious_lines(section, malicious, dealer)
    assert lines[2].split() == ["W1", "20000", "0.5", "2", "4.0", "3.0", "45", "1.4"]
    assert lines[3].split()[:2] == ["W6", "1024"] and lines[3].endswith("n/a: a phase ran past 420 s")
