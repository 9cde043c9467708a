#pragma once

// The body checks of the routes that take JSON, each the sequence of project validation
// calls its handler in src/controlplane (routes.cc, llm_proxy.cc, file_service.cc) makes
// before it touches the store. The handlers themselves need a whole control plane (a store,
// a session, a provider), so the fuzz targets call these; keep them in step with the
// handlers when a route's checks change.

#include <string_view>

#include "common/json_util.h"
#include "common/result.h"
#include "controlplane/llm_proxy.h"
#include "controlplane/validation.h"
#include "files/blob_store.h"

namespace airlock::fuzz {

enum class BodyRoute {
  kEvents,
  kFinish,
  kPresign,
  kChat,
  kCreateSession,
  kPostMessage,
  kCompletions,
  kMessages,
  kResponses,
  kCount
};

// POST /sandbox/v1/events (ControlPlane::SandboxEvent).
inline Status CheckEvent(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(body, {"type", "data"}, "event"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string type, RequiredString(body, "type"));
  AIRLOCK_TRY(controlplane::ValidateEventType(type));
  if (auto it = body.find("data"); it != body.end() && !it->is_null() && !it->is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "\"data\" must be an object");
  }
  (void)DumpJson(body);  // stored as JSON text
  return Ok();
}

// POST /sandbox/v1/finish (ControlPlane::Finish).
inline Status CheckFinish(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(body, {"status", "result"}, "finish"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string status, RequiredString(body, "status"));
  if (status != "succeeded" && status != "failed")
    return MakeError(ErrorCode::kInvalidArgument, "bad status");
  AIRLOCK_ASSIGN_OR_RETURN(auto result, OptionalString(body, "result"));
  if (result && result->size() > 64 * 1024)
    return MakeError(ErrorCode::kPayloadTooLarge, "result too large");
  return Ok();
}

// POST /sandbox/v1/files/presign (FileService::Presign).
inline Status CheckPresign(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(body, {"name", "method", "size", "content_type", "expires_s"},
                                "presign request"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string name, RequiredString(body, "name"));
  AIRLOCK_TRY(files::ValidateFileName(name));
  AIRLOCK_ASSIGN_OR_RETURN(std::string method, RequiredString(body, "method"));
  AIRLOCK_ASSIGN_OR_RETURN(auto size, OptionalInt(body, "size"));
  AIRLOCK_ASSIGN_OR_RETURN(auto content_type, OptionalString(body, "content_type"));
  AIRLOCK_ASSIGN_OR_RETURN(auto expires_s, OptionalInt(body, "expires_s"));
  if (content_type && content_type->find_first_of("\r\n") != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument, "bad content_type");
  }
  if ((size && *size < 0) || (expires_s && *expires_s < 1))
    return MakeError(ErrorCode::kInvalidArgument, "bad size");
  return Ok();
}

// POST /sandbox/v1/llm/chat (LlmProxy::Chat).
inline Status CheckChat(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(body, {"messages", "tools", "model", "stream"}, "chat request"));
  if (!body.contains("messages") || !body["messages"].is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, "\"messages\" must be an array");
  }
  const Json& msgs = body["messages"];
  for (size_t i = 0; i < msgs.size(); ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(
        Json m, controlplane::ValidateChatMessage(msgs[i], "messages[" + std::to_string(i) + "]"));
    (void)DumpJson(m);
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    AIRLOCK_ASSIGN_OR_RETURN(Json t, controlplane::ValidateChatTools(body["tools"]));
    (void)DumpJson(t);
  }
  return Ok();
}

// POST /v1/sessions (ControlPlane::CreateSession), the operator's side.
inline Status CheckCreateSession(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(
      body, {"task", "image", "command", "model", "models", "backend", "limits", "metadata"},
      "session"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string task, RequiredString(body, "task"));
  if (task.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty task");
  AIRLOCK_ASSIGN_OR_RETURN(auto image, OptionalString(body, "image"));
  AIRLOCK_ASSIGN_OR_RETURN(auto model, OptionalString(body, "model"));
  AIRLOCK_ASSIGN_OR_RETURN(auto backend, OptionalString(body, "backend"));
  AIRLOCK_TRY(controlplane::ValidateName("image", image.value_or("base")));
  AIRLOCK_TRY(controlplane::ValidateName("model", model.value_or("default")));
  AIRLOCK_TRY(controlplane::ValidateName("backend", backend.value_or("oci")));
  if (auto it = body.find("command"); it != body.end())
    AIRLOCK_TRY(controlplane::ValidateCommand(*it));
  if (auto it = body.find("limits"); it != body.end()) {
    AIRLOCK_ASSIGN_OR_RETURN(Json limits, controlplane::ParseLimits(*it));
    (void)DumpJson(limits);
  }
  return Ok();
}

// POST /v1/sessions/{id}/messages (ControlPlane::PostMessage).
inline Status CheckPostMessage(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_TRY(RejectUnknownKeys(body, {"content"}, "message"));
  AIRLOCK_ASSIGN_OR_RETURN(std::string content, RequiredString(body, "content"));
  if (content.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty content");
  return Ok();
}

// The faces' routes (LlmProxy::ChatCompletions, Messages, Responses): the real parsers, then
// the translated conversation as the handler stores and forwards it.
inline Status CheckFace(BodyRoute route, std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(Json body, ParseJsonObject(text));
  AIRLOCK_ASSIGN_OR_RETURN(
      controlplane::CompletionsRequest parsed,
      route == BodyRoute::kCompletions ? controlplane::ParseCompletionsRequest(body)
      : route == BodyRoute::kMessages  ? controlplane::ParseMessagesRequest(body)
                                       : controlplane::ParseResponsesRequest(body));
  for (const Json& m : parsed.messages) (void)DumpJson(m);
  (void)DumpJson(parsed.tools);
  (void)DumpJson(parsed.params);
  return Ok();
}

inline Status CheckBody(BodyRoute route, std::string_view text) {
  switch (route) {
    case BodyRoute::kEvents:
      return CheckEvent(text);
    case BodyRoute::kFinish:
      return CheckFinish(text);
    case BodyRoute::kPresign:
      return CheckPresign(text);
    case BodyRoute::kChat:
      return CheckChat(text);
    case BodyRoute::kCreateSession:
      return CheckCreateSession(text);
    case BodyRoute::kPostMessage:
      return CheckPostMessage(text);
    case BodyRoute::kCompletions:
    case BodyRoute::kMessages:
    case BodyRoute::kResponses:
      return CheckFace(route, text);
    case BodyRoute::kCount:
      break;
  }
  return Ok();
}

}  // namespace airlock::fuzz
