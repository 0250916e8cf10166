import pytest

from shusheng.corpus.document import Document
from shusheng.corpus.stages.pii import PiiRedact, shannon_entropy, valid_cn_id


@pytest.mark.parametrize("text, redacted, counts", [
    ("Contact john.doe@example.com or +1 415-555-2671 before Friday.",
     "Contact <EMAIL> or <PHONE> before Friday.", {"email": 1, "phone": 1}),
    ("请联系张三，邮箱zhangsan@qq.com，手机13812345678，或者拨打010-62751234。",
     "请联系张三，邮箱<EMAIL>，手机<PHONE>，或者拨打<PHONE>。", {"email": 1, "phone": 2}),
    ("手机：+86 138 0013 8000，身份证号：11010519491231002X。",
     "手机：<PHONE>，身份证号：<ID>。", {"id": 1, "phone": 1}),
    ("Call (415) 555-2671 or 415.555.2671. Version 1.2.3, date 2021-05-12, pi 3.14159.",
     "Call <PHONE> or <PHONE>. Version 1.2.3, date 2021-05-12, pi 3.14159.", {"phone": 2}),
    ("+44 20 7946 0958 is in London; +49 (0)30 123456 in Berlin.",
     "<PHONE> is in London; <PHONE> in Berlin.", {"phone": 2}),
])
def test_contact_details(text, redacted, counts):
    assert PiiRedact().redact(text) == (redacted, counts)


def test_chinese_ids_need_a_valid_check_digit():
    assert valid_cn_id("11010519491231002X") and valid_cn_id("440304199001011233")
    assert not valid_cn_id("11010519491231003X")
    text = "有效：440304199001011233；校验位错：440304199001011234；日期错：440304199013011233。"
    expected = "有效：<ID>；校验位错：440304199001011234；日期错：440304199013011233。"
    assert PiiRedact().redact(text) == (expected, {"id": 1})


def test_ip_addresses_public_only_by_default():
    text = "Server 8.8.8.8, gateway 192.168.1.1, v6 2001:4860:4860::8888 and ::1, at 12:30:45; std::vector<int> v;"
    assert PiiRedact().redact(text) == (
        "Server <IP>, gateway 192.168.1.1, v6 <IP> and ::1, at 12:30:45; std::vector<int> v;", {"ip": 2})
    assert PiiRedact(redact_private_ips=True).redact(text) == (
        "Server <IP>, gateway <IP>, v6 <IP> and <IP>, at 12:30:45; std::vector<int> v;", {"ip": 4})
    assert PiiRedact().redact("not an IP: 999.1.2.3 or 1.2.3.4.5") == ("not an IP: 999.1.2.3 or 1.2.3.4.5", {})


def test_secrets():
    code = "\n".join([
        'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
        'client = OpenAI(api_key="sk-proj-abcdefghijklmnopqrstuvwxyz123456")',
        'api_key = "Zx9Qw3Er7Ty1Ui5Op2As"',
        '"auth_token": "f3a9c2e17b5d4a08e6c1"',
        "password: hunter2",
        "token = tokenizer_v2_config",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9abc123",
        "gh = 'ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'",
        "-----BEGIN RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA1234",
        "-----END RSA PRIVATE KEY-----",
        "print('done')",
    ])
    assert PiiRedact().redact(code) == ("\n".join([
        'AWS_ACCESS_KEY_ID = "<SECRET>"',
        'client = OpenAI(api_key="<SECRET>")',
        'api_key = "<SECRET>"',
        '"auth_token": "<SECRET>"',
        "password: hunter2",  # too short to tell from a placeholder
        "token = tokenizer_v2_config",  # an identifier, not a secret
        "Authorization: Bearer <SECRET>",
        "gh = '<SECRET>'",
        "<SECRET>",
        "print('done')",
    ]), {"secret": 7})


def test_entropy():
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0


def test_stage_counts_in_metadata_and_kinds():
    doc = PiiRedact().process(Document("d", "Mail a@b.io or c@d.io, call 13912345678."))
    assert doc.text == "Mail <EMAIL> or <EMAIL>, call <PHONE>."
    assert doc.metadata == {"pii": {"email": 2, "phone": 1}}
    assert PiiRedact().process(Document("d", "Nothing here.")).metadata == {"pii": {}}
    only_email = PiiRedact(kinds=["email"])
    assert only_email.redact("a@b.io 13912345678") == ("<EMAIL> 13912345678", {"email": 1})


def test_validation():
    with pytest.raises(ValueError, match=r"kinds has unknown value\(s\) \['ssn'\]"):
        PiiRedact(kinds=["email", "ssn"])
    with pytest.raises(ValueError, match="kinds must be a list"):
        PiiRedact(kinds="email")
    with pytest.raises(ValueError, match="min_entropy"):
        PiiRedact(min_entropy=-1)
