"""The HTTP ceiling: a FastAPI endpoint that takes the same body as ``POST /score`` and does nothing with it.

Served by the same uvicorn (same event loop and HTTP parser) as the real
service, so the gap between the two is what scoring costs, not the framework.
"""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/score")
async def score(request: Request) -> dict:
    body = await request.body()
    return {"bytes": len(body)}
