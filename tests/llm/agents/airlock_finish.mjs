// The one Airlock call the test agents make besides pointing their LLM client at the control
// plane: ending the session with a result (POST /sandbox/v1/finish). Exits 1 if it is refused.
export async function finish(result) {
  const finished = await fetch(`${process.env.CONTROL_PLANE_URL}/sandbox/v1/finish`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${process.env.SESSION_TOKEN}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({ status: "succeeded", result }),
  });
  if (!finished.ok) {
    console.error(`finish: ${finished.status} ${await finished.text()}`);
    process.exit(1);
  }
}
