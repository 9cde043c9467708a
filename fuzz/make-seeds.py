#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ (committed; re-run after changing a seed).

Small, realistic inputs in the layout each target expects (see the comment at the top of each
fuzz/<target>.cc). Deterministic: the same script writes the same bytes.
"""
import gzip
import hashlib
import hmac
import io
import json
import os
import shutil
import tarfile
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SEP = b"\n--\n"
# fuzz/http_harness.h: the fixed session, file and URL signing key of the harness.
SESSION = "ses_aaaaaaaaaaaaaaaaaaaaaaaa"
KID, KEY = "fz01", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
EXPIRES = 4102444800  # 2100-01-01: the seeds stay valid


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def tar(entries, compress=False):
    """entries: (name, type, data_or_linkname, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.mode = mode
            info.uid = info.gid = 0
            if kind == "file":
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                t.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = payload
                t.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def sign(method, session, name, expires, max_bytes):
    terms = "airlock-file-url-v1\n%d:%s\n%d:%s\n%d:%s\n%d\n%d" % (
        len(method), method, len(session), session, len(name), name, expires, max_bytes)
    return hmac.new(KEY.encode(), terms.encode(), hashlib.sha256).hexdigest()


def file_url(method, name, max_bytes):
    """`name` as it appears in the URL; the signature covers its percent-decoded form."""
    sig = sign(method, SESSION, urllib.parse.unquote(name), EXPIRES, max_bytes)
    return "/sandbox/v1/files/%s/%s?method=%s&expires=%d&max=%d&kid=%s&sig=%s" % (
        SESSION, name, method, EXPIRES, max_bytes, KID, sig)


def http(method, target, body=b"", headers=()):
    h = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1"]
    h += list(headers)
    if body or method in ("POST", "PUT"):
        h.append("Content-Type: application/json")
        h.append("Content-Length: %d" % len(body))
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


EVENT = js({"type": "tool.call", "data": {"name": "bash", "argv": ["ls", "-l"]}})
FINISH = js({"status": "succeeded", "result": "done: 3 files written"})
PRESIGN = js({"name": "report.pdf", "method": "PUT", "size": 1024, "content_type": "application/pdf",
              "expires_s": 600})
CHAT = js({"messages": [
    {"role": "user", "content": [{"type": "text", "text": "what is in this picture?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "file1\nfile2"}],
    "tools": [{"type": "function", "function": {"name": "bash", "description": "run a command",
                                                "parameters": {"type": "object",
                                                               "properties": {"cmd": {"type": "string"}}}}}],
    "model": "default", "stream": True})
CREATE = js({"task": "summarise the logs", "image": "base", "command": ["/usr/bin/airlock-agent", "--verbose"],
             "model": "default", "models": ["default", "big"], "backend": "oci",
             "limits": {"memory_mb": 512, "cpus": 1.5, "pids": 128, "timeout_s": 600, "max_tokens": 100000},
             "metadata": {"ticket": "OPS-1"}})
MESSAGE = js({"content": "and now the second part"})
# The faces: a whole conversation with a tool round trip, in each API's own shape.
COMPLETIONS = js({
    "model": "default", "temperature": 0.2, "stream": True, "stream_options": {"include_usage": True},
    "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "where am I"},
                 {"role": "assistant", "content": None, "refusal": None,
                  "tool_calls": [{"id": "call_1", "type": "function",
                                  "function": {"name": "bash", "arguments": "{\"cmd\":\"pwd\"}"}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "/home/sandbox"}],
    "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]})
MESSAGES = js({
    "model": "default", "max_tokens": 100, "system": "Be brief.", "stream": True,
    "messages": [{"role": "user", "content": "where am I"},
                 {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                                   {"type": "tool_use", "id": "toolu_1", "name": "bash",
                                                    "input": {"cmd": "pwd"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": "/home/sandbox"}]}],
    "tools": [{"name": "bash", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
RESPONSES = js({
    "model": "default", "instructions": "Be brief.", "stream": True, "store": False, "include": [],
    "max_output_tokens": 100, "text": {"format": {"type": "json_schema", "name": "r", "schema": {}}},
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "where am I"}]},
              {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
              {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "bash",
               "arguments": "{\"cmd\":\"pwd\"}", "status": "completed"},
              {"type": "function_call_output", "call_id": "call_1", "output": "/home/sandbox"},
              {"type": "reasoning", "id": "rs_1", "summary": []}],
    "tools": [{"type": "function", "name": "bash", "parameters": {"type": "object"}, "strict": True}],
    "tool_choice": {"type": "function", "name": "bash"}})


def sandbox_json():
    for i, body in enumerate([EVENT, FINISH, PRESIGN, CHAT, CREATE, MESSAGE, COMPLETIONS, MESSAGES,
                              RESPONSES]):
        write("sandbox_json_fuzz", "route%d" % i, bytes([i]) + body)


def http_request():
    auth = ("Authorization: Bearer ast_" + "A" * 43,)
    write("http_request_fuzz", "events", http("POST", "/sandbox/v1/events", EVENT, auth))
    write("http_request_fuzz", "chat", http("POST", "/sandbox/v1/llm/chat", CHAT, auth + ("Expect: 100-continue",)))
    write("http_request_fuzz", "inbox", http("GET", "/sandbox/v1/inbox?wait=30", b"", auth))
    write("http_request_fuzz", "create", http("POST", "/v1/sessions", CREATE, ("Authorization: Bearer aok_x",)))
    write("http_request_fuzz", "events_sse",
          http("GET", "/v1/sessions/ses_abcdefghijklmnopqrstuvwx/events?after=3&limit=10", b"",
               ("Last-Event-ID: 3", "Accept: text/event-stream")))
    write("http_request_fuzz", "pipelined",
          http("GET", "/healthz") + http("POST", "/sandbox/v1/finish", FINISH, auth) + http("DELETE", "/healthz"))
    chunked = (b"POST /sandbox/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"10\r\n" + EVENT[:16] + b"\r\n" + (b"%x" % (len(EVENT) - 16)) + b"\r\n" + EVENT[16:] +
               b"\r\n0\r\n\r\n")
    write("http_request_fuzz", "chunked", chunked)
    write("http_request_fuzz", "file_get",
          http("GET", file_url("GET", "hello.txt", 0), b"", ("Range: bytes=2-5",)))
    write("http_request_fuzz", "file_put",
          http("PUT", file_url("PUT", "up.bin", 64), b"0123456789", ("Expect: 100-continue",)))


def presigned_url():
    write("presigned_url_fuzz", "get", "GET " + file_url("GET", "hello.txt", 0))
    write("presigned_url_fuzz", "get_range", ("GET " + file_url("GET", "hello.txt", 0)).encode() + SEP +
          b"bytes=-4")
    write("presigned_url_fuzz", "head", "HEAD " + file_url("GET", "hello.txt", 0))
    write("presigned_url_fuzz", "put", ("PUT " + file_url("PUT", "new%20file.txt", 32)).encode() + SEP + SEP +
          b"uploaded bytes")
    write("presigned_url_fuzz", "put_too_big", ("PUT " + file_url("PUT", "big.bin", 4)).encode() + SEP + SEP +
          b"more than four bytes")
    write("presigned_url_fuzz", "bad_sig", "GET " + file_url("GET", "hello.txt", 0).replace("sig=", "sig=0"))


def sse():
    stream = (b": keep-alive\r\n\r\nid: 1\nevent: message_start\ndata: {\"type\":\"message_start\"}\n\n"
              b"data: line one\ndata: line two\n\nretry: 100\nid: 2\rdata: cr only\r\r"
              b"data:no space\n\n")
    write("sse_fuzz", "mixed", b"\x03\x05\x01\x07" + stream)
    write("sse_fuzz", "bom", b"\x01\x02\xef\xbb\xbfdata: x\n\n")
    write("sse_fuzz", "whole", b"\x00" + stream)


def config():
    write("config_fuzz", "full", """
[server]
operator_listen = "127.0.0.1:7400"
sandbox_listen = "0.0.0.0:7401"
max_body_bytes = 1048576
[store]
synchronous = "full"
[sandbox]
[log]
level = "debug"
format = "text"
[providers.main]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
[providers.claude]
kind = "anthropic"
api_key = "sk-ant-123"
[models.default]
provider = "main"
model = "gpt-4o-mini"
[models.big]
provider = "claude"
model = "claude-sonnet-4-5"
[files]
store = "local"
max_expiry_s = 3600
""")
    write("config_fuzz", "s3", """
[files]
store = "s3"
s3_endpoint = "http://127.0.0.1:9000"
s3_bucket = "airlock"
s3_path_style = true
""")
    write("config_fuzz", "syntax", "[server\nx = [1, 2, {a = \"b\"}]\n")


OPENAI_REPLY = js({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                       "role": "assistant", "content": None,
                       "tool_calls": [{"id": "call_1", "type": "function",
                                       "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}}]}}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
OPENAI_STREAM = b"".join(b"data: " + js(c) + b"\n\n" for c in [
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                   "content": "Hel"}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"c"}}]}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "md\":1}"}}]}, "finish_reason": "tool_calls"}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
]) + b"data: [DONE]\n\n"
ANTHROPIC_REPLY = js({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                      "content": [{"type": "text", "text": "Let me look."},
                                  {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}}],
                      "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 9}})


def anthropic_event(kind, payload):
    payload = dict(payload, type=kind)
    return b"event: " + kind.encode() + b"\ndata: " + js(payload) + b"\n\n"


ANTHROPIC_STREAM = b"".join([
    anthropic_event("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "content": [], "usage": {"input_tokens": 20, "output_tokens": 1}}}),
    anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
    anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
    anthropic_event("content_block_stop", {"index": 0}),
    anthropic_event("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                          "name": "bash", "input": {}}}),
    anthropic_event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                                  "partial_json": "{\"cmd\": \"l"}}),
    anthropic_event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                                  "partial_json": "s\"}"}}),
    anthropic_event("content_block_stop", {"index": 1}),
    anthropic_event("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}}),
    anthropic_event("message_stop", {}),
])
HISTORY = js([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "list files"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "assistant", "content": "Sure.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "a\nb"},
    {"role": "user", "content": "thanks", "name": "alice"}])
TOOLS = js([{"type": "function", "function": {"name": "bash", "description": "run",
                                              "parameters": {"type": "object"}}}])


def llm():
    write("openai_fuzz", "reply", b"\x00" + OPENAI_REPLY)
    write("openai_fuzz", "stream", b"\x01" + OPENAI_STREAM)
    write("openai_fuzz", "error", b"\x02\x1d" + js({"error": {"type": "rate_limit_exceeded",
                                                             "code": "rate_limit_exceeded", "message": "slow"}}))
    write("openai_fuzz", "history", b"\x03" + HISTORY + SEP + TOOLS)
    write("anthropic_fuzz", "reply", b"\x00" + ANTHROPIC_REPLY)
    write("anthropic_fuzz", "stream", b"\x01" + ANTHROPIC_STREAM)
    write("anthropic_fuzz", "error", b"\x02\x9d" + js({"type": "error", "error": {"type": "overloaded_error",
                                                                                 "message": "busy"}}))
    write("anthropic_fuzz", "history", b"\x03" + HISTORY + SEP + TOOLS)


def sigv4():
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
           b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>airlock</Name>'
           b'<Prefix>sessions/ses_1/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>'
           b'<IsTruncated>true</IsTruncated><Contents><Key>sessions/ses_1/a&amp;b.txt</Key>'
           b'<LastModified>2009-10-12T17:50:30.000Z</LastModified><ETag>&quot;fba9&quot;</ETag>'
           b'<Size>434234</Size><StorageClass>STANDARD</StorageClass></Contents><Contents>'
           b'<Key>sessions/ses_1/&#x263A;</Key><LastModified>2009-10-12T17:50:31.000Z</LastModified>'
           b'<Size>0</Size></Contents><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM='
           b'</NextContinuationToken></ListBucketResult>')
    write("sigv4_fuzz", "list", b"\x00" + xml)
    write("sigv4_fuzz", "endpoint", b"\x01https://s3.eu-west-1.amazonaws.com/")
    write("sigv4_fuzz", "endpoint_v6", b"\x01http://[::1]:9000")
    write("sigv4_fuzz", "presign", b"\x02sessions/ses_1/report 2026.pdf" + SEP + b"my-bucket" + SEP +
          b"application/pdf" + SEP + b"content-length")
    write("sigv4_fuzz", "headers", b"\x03Host: s3.amazonaws.com\nX-Amz-Meta-A:  a   b \nrange: bytes=0-9" + SEP +
          b"list-type=2\nprefix=sessions/\ncontinuation-token=a+b/c=" + SEP + b"/bucket/key with space")


def layers():
    base = [("etc", "dir", None, 0o755), ("etc/hostname", "file", b"sandbox\n", 0o644),
            ("bin", "dir", None, 0o755), ("bin/sh", "file", b"#!busybox\n", 0o4755),
            ("bin/ash", "symlink", "sh", 0o777), ("bin/hush", "hardlink", "bin/sh", 0o755),
            ("usr/lib/", "dir", None, 0o755), ("usr/lib/x", "file", b"x" * 100, 0o600)]
    upper = [("etc/.wh.hostname", "file", b"", 0o644), ("usr/lib/.wh..wh..opq", "file", b"", 0o644),
             ("usr/lib/y", "file", b"y", 0o644)]
    write("layer_fuzz", "tar", tar(base))
    write("layer_fuzz", "targz", tar(base, compress=True))
    write("layer_fuzz", "two_layers", tar(base, compress=True) + SEP + tar(upper))


def oci():
    layer = tar([("hello", "file", b"hi\n", 0o644)], compress=True)
    config = js({"architecture": "amd64", "os": "linux", "config": {
        "Entrypoint": ["/hello"], "Cmd": ["--x"], "Env": ["PATH=/bin"], "WorkingDir": "/", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    # Parts: top file, then blobs 1..; "$N" is blob N's digest, "#N" its size, "%N" its hex.
    manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$2","size":#2},'
                b'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$3","size":#3}]}')
    index = (b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
             b'"digest":"$1","size":#1,"platform":{"architecture":"amd64","os":"linux"},'
             b'"annotations":{"org.opencontainers.image.ref.name":"latest",'
             b'"io.containerd.image.name":"docker.io/library/fuzz:latest"}}]}')
    write("oci_image_fuzz", "oci_layout", b"\x01" + index + SEP + manifest + SEP + config + SEP + layer)
    docker = b'[{"Config":"blobs/sha256/%1","RepoTags":["fuzz:latest"],"Layers":["blobs/sha256/%2"]}]'
    write("oci_image_fuzz", "docker_save", b"\x02" + docker + SEP + config + SEP + layer)
    # The same OCI layout as an archive (mode 0), with real digests.
    def blob(b):
        return hashlib.sha256(b).hexdigest(), b
    cfg_hex, _ = blob(config)
    lay_hex, _ = blob(layer)
    man = (manifest.replace(b"$2", b"sha256:" + cfg_hex.encode()).replace(b"#2", str(len(config)).encode())
           .replace(b"$3", b"sha256:" + lay_hex.encode()).replace(b"#3", str(len(layer)).encode()))
    man_hex, _ = blob(man)
    idx = index.replace(b"$1", b"sha256:" + man_hex.encode()).replace(b"#1", str(len(man)).encode())
    archive = tar([("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
                   ("index.json", "file", idx, 0o644), ("blobs", "dir", None, 0o755),
                   ("blobs/sha256", "dir", None, 0o755),
                   ("blobs/sha256/" + man_hex, "file", man, 0o644),
                   ("blobs/sha256/" + cfg_hex, "file", config, 0o644),
                   ("blobs/sha256/" + lay_hex, "file", layer, 0o644)])
    write("oci_image_fuzz", "oci_archive", b"\x00" + archive)


def egress():
    rules = b"*.github.com\npypi.org:443\n*\nexample.com.\n*.a.b:8080\n10.0.0.1:80\nbad..name"
    addresses = b"127.0.0.1:8443\n[::1]:80\n[::ffff:10.0.0.5]:5432\n0.0.0.0:1"
    write("egress_policy_fuzz", "allowed", rules + SEP + addresses + SEP + b"api.github.com" + SEP +
          b"443" + SEP + b"140.82.112.5")
    write("egress_policy_fuzz", "rebinding", rules + SEP + addresses + SEP + b"www.example.com." +
          SEP + b"443" + SEP + b"::ffff:169.254.169.254")
    write("egress_policy_fuzz", "literal", rules + SEP + addresses + SEP + b"[::ffff:127.0.0.1]" +
          SEP + b"8443" + SEP + b"127.0.0.1")
    write("egress_policy_fuzz", "numeric", rules + SEP + SEP + b"0x7f000001" + SEP + b"80" + SEP +
          b"64:ff9b::a9fe:a9fe")


def client_hello():
    def u16(n):
        return n.to_bytes(2, "big")

    def ext(kind, body):
        return u16(kind) + u16(len(body)) + body

    def hello(name, split=None):
        exts = b""
        if name is not None:
            entry = b"\x00" + u16(len(name)) + name
            exts += ext(0, u16(len(entry)) + entry)
        exts += ext(43, b"\x02\x03\x04")  # supported_versions: TLS 1.3
        body = (b"\x03\x03" + bytes(32) + b"\x00" + u16(2) + b"\x13\x01" + b"\x01\x00" +
                u16(len(exts)) + exts)
        msg = b"\x01" + len(body).to_bytes(3, "big") + body
        pieces = [msg] if split is None else [msg[:split], msg[split:]]
        return b"".join(b"\x16\x03\x01" + u16(len(p)) + p for p in pieces)

    write("client_hello_fuzz", "sni", hello(b"example.com"))
    write("client_hello_fuzz", "no_sni", hello(None))
    write("client_hello_fuzz", "two_records", hello(b"api.github.com", split=10))
    write("client_hello_fuzz", "not_tls", b"SSH-2.0-OpenSSH_9.2\r\n")


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    sandbox_json()
    http_request()
    presigned_url()
    sse()
    config()
    llm()
    sigv4()
    layers()
    oci()
    egress()
    client_hello()
